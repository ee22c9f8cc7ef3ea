#!/usr/bin/env python3
"""Write the nano Llama GGUF fixtures used by Hearth's tests.

Makes (deterministic, fixed seeds; running it again rewrites byte-identical files):

    tests/data/nano/nano-llama.gguf      default
    tests/data/nano/nano-llama3.gguf     with --llama3

Both are tiny `llama`-architecture models with random weights, written with the
`gguf` package's GGUFWriter:

    2 layers, embedding 256, 4 heads, 2 KV heads (GQA), head dim 64 (key/value
    length 64, rope.dimension_count 64), FFN 512, context 256, RMS eps 1e-5.

nano-llama.gguf: rope.freq_base 1e4, UNTIED output head (`output.weight`), and
quant types mixed so that every block type Hearth reads is used somewhere:

    token_embd Q8_0, output Q6_K, norms F32
    layer 0: attn_q Q4_0, attn_k Q4_1, attn_v Q5_0, attn_output Q5_1,
             ffn_gate Q4_K, ffn_up Q5_K, ffn_down Q6_K
    layer 1: attn_q F16, attn_k BF16, attn_v Q8_0, attn_output F32,
             ffn_gate BF16, ffn_up F16, ffn_down Q8_0

Simple types (F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q5_0/Q5_1) are quantized with gguf-py
from Gaussian weights. gguf-py cannot quantize K-quants, so Q4_K/Q5_K/Q6_K
tensors are random raw blocks (uniform random bytes for the quants and the
packed 6-bit / int8 sub-block scales) with positive f16 super-scales d (and
dmin) picked per block in [0.8, 1.2] x a per-tensor value that gives the
tensor the intended standard deviation; dmin is set so the tensor's mean is
about zero. The weights are whatever those blocks dequantize to. All d values
are normal (not subnormal) f16 numbers.

nano-llama3.gguf (--llama3): rope.freq_base 5e5, Llama-3 RoPE scaling written
the way llama.cpp's convert_hf_to_gguf writes it: a `rope_freqs.weight` F32
tensor of n_rot/2 frequency factors (theta_i is divided by factor_i). The
factors are those of transformers' `_compute_llama3_parameters` with factor 32,
low_freq_factor 1, high_freq_factor 4 and original_max_position_embeddings 128
(scaled down from Llama 3's 8192 so that, at head dim 64 and context 256, the
three regimes -- unchanged, smoothed, divided by 32 -- all occur; the script
asserts it). Tied output (no `output.weight`), all matrices Q8_0, norms F32.

Tokenizer (both files): byte-level BPE, tokenizer.ggml.model "gpt2", pre
"smollm". Ids 0..2 are the control tokens <|endoftext|>, <|im_start|>,
<|im_end|> (laid out like SmolLM2: bos 1, eos 2, pad 2), then the 256 byte
tokens in GPT-2's bytes_to_unicode order, then one token per merge. The merges
(NUM_MERGES of them) are learned by plain BPE from the English text in
TRAIN_TEXT below, pre-split with GPT-2's regex; no merge involves a digit, so
the `smollm` pre-tokenizer (digits split one by one) and GPT-2's regex give
the same ids. add_bos_token false; a ChatML `tokenizer.chat_template`.

--llama8b PATH writes a speed fixture instead (not a test file: 4.7 GB): a
model shaped like Llama 3 8B (32 layers, embedding 4096, 32 heads and 8 KV
heads of 128, FFN 14336, vocabulary 128256 -- the nano tokenizer padded with
reserved control tokens) in Q4_K, output Q6_K as llama.cpp's Q4_K_M has it,
norms F32. Random K-quant blocks as above; one layer's blocks are written 32
times (speed does not depend on the values), so it takes seconds to make. Both
Hearth and llama.cpp load it, so their tokens/s compare on the same file.

Usage (from the repository root, in the tools venv, see tools/README.md):

    .venv-tools/bin/python tools/make_nano_model.py            # nano-llama.gguf
    .venv-tools/bin/python tools/make_nano_model.py --llama3   # nano-llama3.gguf
    .venv-tools/bin/python tools/make_nano_model.py --llama8b /tmp/llama8b-q4_k.gguf
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import regex

import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import quantize, dequantize

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "data" / "nano"

N_LAYER = 2
N_EMBD = 256
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = 64
N_FF = 512
N_CTX = 256
RMS_EPS = 1e-5
NUM_MERGES = 120

# Llama 3 RoPE scaling for --llama3 (original_max_position_embeddings scaled down, see docstring).
LLAMA3_ROPE = dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=128)

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
BOS_ID, EOS_ID, PAD_ID = 1, 2, 2

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# English text the merges are learned from (written for this fixture; no digits on purpose).
TRAIN_TEXT = """\
Once upon a time there was a little house at the edge of the forest. In the house lived an old
man and his dog. Every morning the man would open the door, look at the sky and say: the sun is
up, the day is good, and there is work to do. The dog would run out into the garden and the man
would follow him with a cup of tea in his hand.
The capital of France is Paris, and the capital of Italy is Rome. People who travel there like
to walk along the river, to eat in the small restaurants and to talk with the people they meet.
What is the meaning of this? Why is the sky blue? Because the light of the sun is scattered by
the air, and blue light is scattered more than red light. That is the reason the sky is blue in
the day and red in the evening when the sun is low.
def fibonacci(n):
    if n < two:
        return n
    return fibonacci(n - one) + fibonacci(n - two)
The quick brown fox jumps over the lazy dog. She sells sea shells on the sea shore. How much
wood would a woodchuck chuck if a woodchuck could chuck wood? It is what it is, and that is that.
Hello, world! Hello there, how are you today? I am fine, thank you, and you? We are all well here.
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character mapping, in GPT-2's order."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def learn_merges(text: str, num_merges: int) -> list[tuple[str, str]]:
    """Plain byte-level BPE training; ties broken by the lexicographically smallest pair."""
    b2u = bytes_to_unicode()
    counts: dict[tuple[str, ...], int] = {}
    for piece in regex.findall(GPT2_SPLIT, text):
        word = tuple(b2u[b] for b in piece.encode("utf-8"))
        counts[word] = counts.get(word, 0) + 1
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: dict[tuple[str, str], int] = {}
        for word, c in counts.items():
            for a, b in zip(word, word[1:]):
                if any(ch.isdigit() for ch in a + b):
                    continue
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        new_counts: dict[tuple[str, ...], int] = {}
        for word, c in counts.items():
            out: list[str] = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_counts[tuple(out)] = new_counts.get(tuple(out), 0) + c
        counts = new_counts
    return merges


def build_vocab() -> tuple[list[str], list[int], list[str]]:
    assert not any(ch.isdigit() for ch in TRAIN_TEXT)
    b2u = bytes_to_unicode()
    merges = learn_merges(TRAIN_TEXT, NUM_MERGES)
    assert len(merges) == NUM_MERGES
    tokens = list(SPECIAL_TOKENS) + [b2u[b] for b in b2u] + [a + b for a, b in merges]
    assert len(set(tokens)) == len(tokens), "duplicate token"
    types = [int(gguf.TokenType.CONTROL)] * len(SPECIAL_TOKENS) + [int(gguf.TokenType.NORMAL)] * (len(tokens) - len(SPECIAL_TOKENS))
    return tokens, types, [f"{a} {b}" for a, b in merges]


# ---------------------------------------------------------------------------------------------
# Weights

def f16_bytes(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).view(np.uint8).reshape(x.shape[0], 2)


def random_kquant_blocks(rng: np.random.Generator, qtype: QT, n_blocks: int, d_scale: float) -> np.ndarray:
    """n_blocks random raw K-quant blocks with positive normal-f16 super-scales ~ d_scale."""
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    d = (d_scale * rng.uniform(0.8, 1.2, size=n_blocks)).astype(np.float32)
    assert d.min() >= 6.2e-5, f"super-scale {d.min()} would be a subnormal f16"
    if qtype in (QT.Q4_K, QT.Q5_K):
        # d (f16), dmin (f16), 12 bytes of packed 6-bit scales/mins, then quants.
        # Mean of d*sc*q - dmin*m is zero for dmin = d * E[q] (E[sc] == E[m]).
        mean_q = 7.5 if qtype == QT.Q4_K else 15.5
        raw[:, 0:2] = f16_bytes(d)
        raw[:, 2:4] = f16_bytes(d * mean_q)
    elif qtype == QT.Q6_K:
        # ql[128], qh[64], int8 scales[16], d (f16) last.
        raw[:, 208:210] = f16_bytes(d)
    else:
        raise ValueError(qtype)
    return raw


def make_tensor(rng: np.random.Generator, qtype: QT, shape: tuple[int, int], std: float) -> tuple[np.ndarray, np.ndarray]:
    """(raw bytes or array to write, dequantized f32 weights) for a (rows, row_len) matrix."""
    rows, cols = shape
    if qtype in (QT.Q4_K, QT.Q5_K, QT.Q6_K):
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        n_blocks = rows * cols // block_size
        # Dequantization is linear in (d, dmin): measure the std at d ~ 1 (dmin in proportion), then scale.
        probe = random_kquant_blocks(np.random.default_rng(0), qtype, 4096, 1.0)
        unit_std = float(dequantize(probe, qtype).std())
        raw = random_kquant_blocks(rng, qtype, n_blocks, std / unit_std)
        raw = raw.reshape(rows, -1)
        return raw, dequantize(raw, qtype).reshape(rows, cols)
    w = (rng.standard_normal(size=shape) * std).astype(np.float32)
    if qtype == QT.F32:
        return w, w
    if qtype == QT.F16:
        h = w.astype(np.float16)
        return h, h.astype(np.float32)
    q = quantize(w, qtype)
    return q, dequantize(q, qtype).reshape(rows, cols)


def llama3_rope_factors(freq_base: float) -> np.ndarray:
    """rope_freqs.weight as llama.cpp's convert_hf_to_gguf computes it; checked against transformers' formula."""
    import torch  # only for the float32 inv_freq exactly as both converters compute it

    dim = HEAD_DIM
    p = LLAMA3_ROPE
    freqs = 1.0 / (freq_base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    low_freq_wavelen = p["original_max_position_embeddings"] / p["low_freq_factor"]
    high_freq_wavelen = p["original_max_position_embeddings"] / p["high_freq_factor"]
    factors = []
    regimes = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < high_freq_wavelen:
            factors.append(1)
            regimes.append("unchanged")
        elif wavelen > low_freq_wavelen:
            factors.append(p["factor"])
            regimes.append("scaled")
        else:
            smooth = (p["original_max_position_embeddings"] / wavelen - p["low_freq_factor"]) / (p["high_freq_factor"] - p["low_freq_factor"])
            factors.append(1 / ((1 - smooth) / p["factor"] + smooth))
            regimes.append("smoothed")
    factors_np = torch.tensor(factors, dtype=torch.float32).numpy()
    for r in ("unchanged", "smoothed", "scaled"):
        assert r in regimes, f"llama3 rope scaling leaves no frequency {r}"
    print(f"rope_freqs: {regimes.count('unchanged')} unchanged, {regimes.count('smoothed')} smoothed, "
          f"{regimes.count('scaled')} divided by {p['factor']}")

    # Cross-check with transformers' own llama3 inverse frequencies: inv_freq / inv_freq_llama3 == factors.
    try:
        from transformers import LlamaConfig
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    except ImportError:
        print("transformers not importable: skipping the cross-check of rope_freqs", file=sys.stderr)
        return factors_np
    cfg = LlamaConfig(hidden_size=N_EMBD, num_attention_heads=N_HEAD, head_dim=HEAD_DIM,
                      rope_parameters=dict(rope_type="llama3", rope_theta=freq_base, **p))
    inv_llama3, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    ratio = (freqs.double() / inv_llama3.double()).numpy()
    err = np.abs(ratio / factors_np.astype(np.float64) - 1).max()
    assert err < 1e-5, f"rope_freqs disagree with transformers' llama3 parameters (rel err {err})"
    return factors_np


def build(llama3: bool) -> Path:
    name = "nano-llama3" if llama3 else "nano-llama"
    rng = np.random.default_rng(20250403 if llama3 else 20250402)
    freq_base = 500000.0 if llama3 else 10000.0
    tokens, types, merges = build_vocab()
    n_vocab = len(tokens)

    path = OUT_DIR / f"{name}.gguf"
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name(name)
    w.add_description(
        "Random-weight test fixture for Hearth, written by tools/make_nano_model.py"
        + (" --llama3" if llama3 else "") + "; not a trained model.")
    w.add_block_count(N_LAYER)
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_key_length(HEAD_DIM)
    w.add_value_length(HEAD_DIM)
    w.add_rope_dimension_count(HEAD_DIM)
    w.add_rope_freq_base(freq_base)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_vocab_size(n_vocab)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_pad_token_id(PAD_ID)
    w.add_add_bos_token(False)
    w.add_add_space_prefix(False)
    w.add_chat_template(CHAT_TEMPLATE)

    # (qtype, std) per tensor. Stds: q/k sharp enough for non-uniform attention, residual
    # contributions of order 1, logits std ~3 so greedy steps are rarely near-ties.
    if llama3:
        layer_types = [dict.fromkeys(["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"], QT.Q8_0)] * N_LAYER
        embd_type, out_type = QT.Q8_0, None
    else:
        layer_types = [
            dict(attn_q=QT.Q4_0, attn_k=QT.Q4_1, attn_v=QT.Q5_0, attn_output=QT.Q5_1,
                 ffn_gate=QT.Q4_K, ffn_up=QT.Q5_K, ffn_down=QT.Q6_K),
            dict(attn_q=QT.F16, attn_k=QT.BF16, attn_v=QT.Q8_0, attn_output=QT.F32,
                 ffn_gate=QT.BF16, ffn_up=QT.F16, ffn_down=QT.Q8_0),
        ]
        embd_type, out_type = QT.Q8_0, QT.Q6_K
    stds = dict(attn_q=0.1, attn_k=0.1, attn_v=0.08, attn_output=0.08, ffn_gate=0.08, ffn_up=0.08, ffn_down=0.12)
    shapes = dict(attn_q=(N_HEAD * HEAD_DIM, N_EMBD), attn_k=(N_HEAD_KV * HEAD_DIM, N_EMBD),
                  attn_v=(N_HEAD_KV * HEAD_DIM, N_EMBD), attn_output=(N_EMBD, N_HEAD * HEAD_DIM),
                  ffn_gate=(N_FF, N_EMBD), ffn_up=(N_FF, N_EMBD), ffn_down=(N_EMBD, N_FF))

    def add(tname: str, qtype: QT, shape: tuple[int, ...], std: float, mean: float = 0.0) -> None:
        if len(shape) == 1:
            data = (mean + rng.standard_normal(size=shape) * std).astype(np.float32)
            assert qtype == QT.F32
            w.add_tensor(tname, data)
            print(f"  {tname:28s} {qtype.name:5s} {shape} mean {data.mean():+.3f} std {data.std():.3f}")
            return
        data, deq = make_tensor(rng, qtype, shape, std)
        if qtype in (QT.F32, QT.F16):
            w.add_tensor(tname, data)
        else:
            w.add_tensor(tname, data, raw_shape=data.shape, raw_dtype=qtype)
        print(f"  {tname:28s} {qtype.name:5s} {shape} std {deq.std():.4f} absmax {np.abs(deq).max():.3f}")

    add("token_embd.weight", embd_type, (n_vocab, N_EMBD), 0.25 if llama3 else 0.8)
    if llama3:
        w.add_tensor("rope_freqs.weight", llama3_rope_factors(freq_base))
    for i in range(N_LAYER):
        add(f"blk.{i}.attn_norm.weight", QT.F32, (N_EMBD,), 0.1, 1.0)
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add(f"blk.{i}.{t}.weight", layer_types[i][t], shapes[t], stds[t])
        add(f"blk.{i}.ffn_norm.weight", QT.F32, (N_EMBD,), 0.1, 1.0)
        for t in ("ffn_gate", "ffn_up", "ffn_down"):
            add(f"blk.{i}.{t}.weight", layer_types[i][t], shapes[t], stds[t])
    add("output_norm.weight", QT.F32, (N_EMBD,), 0.1, 1.0)
    if out_type is not None:
        add("output.weight", out_type, (n_vocab, N_EMBD), 0.19)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes, vocab {n_vocab})")
    return path


def build_llama8b(path: Path) -> Path:
    """The Llama-3-8B-shaped Q4_K speed fixture (see the module docstring)."""
    n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab = 32, 4096, 32, 8, 128, 14336, 128256
    rng = np.random.default_rng(20251125)
    tokens, types, merges = build_vocab()
    n_pad = n_vocab - len(tokens)
    tokens = tokens + [f"<|reserved_special_token_{i}|>" for i in range(n_pad)]
    types = types + [gguf.TokenType.CONTROL] * n_pad

    w = gguf.GGUFWriter(path, "llama")
    w.add_name("llama8b-shaped-q4_k")
    w.add_description("Random-weight speed fixture shaped like Llama 3 8B, written by "
                      "tools/make_nano_model.py --llama8b; not a trained model.")
    w.add_block_count(n_layer)
    w.add_context_length(8192)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(RMS_EPS)
    w.add_vocab_size(n_vocab)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("smollm")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    def blocks(qtype: QT, shape: tuple[int, int], std: float) -> np.ndarray:
        block_size, _ = gguf.GGML_QUANT_SIZES[qtype]
        probe = random_kquant_blocks(np.random.default_rng(0), qtype, 4096, 1.0)
        unit_std = float(dequantize(probe, qtype).std())
        raw = random_kquant_blocks(rng, qtype, shape[0] * shape[1] // block_size, std / unit_std)
        return raw.reshape(shape[0], -1)

    shapes = dict(attn_q=(n_head * head_dim, n_embd), attn_k=(n_head_kv * head_dim, n_embd),
                  attn_v=(n_head_kv * head_dim, n_embd), attn_output=(n_embd, n_head * head_dim),
                  ffn_gate=(n_ff, n_embd), ffn_up=(n_ff, n_embd), ffn_down=(n_embd, n_ff))
    layer = {t: blocks(QT.Q4_K, shape, 0.04) for t, shape in shapes.items()}
    norm = np.ones(n_embd, dtype=np.float32)

    def add(name: str, data: np.ndarray, qtype: QT) -> None:
        if qtype == QT.F32:
            w.add_tensor(name, data)
        else:
            w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=qtype)

    add("token_embd.weight", blocks(QT.Q4_K, (n_vocab, n_embd), 0.04), QT.Q4_K)
    for i in range(n_layer):
        add(f"blk.{i}.attn_norm.weight", norm, QT.F32)
        for t in ("attn_q", "attn_k", "attn_v", "attn_output"):
            add(f"blk.{i}.{t}.weight", layer[t], QT.Q4_K)
        add(f"blk.{i}.ffn_norm.weight", norm, QT.F32)
        for t in ("ffn_gate", "ffn_up", "ffn_down"):
            add(f"blk.{i}.{t}.weight", layer[t], QT.Q4_K)
    add("output_norm.weight", norm, QT.F32)
    add("output.weight", blocks(QT.Q6_K, (n_vocab, n_embd), 0.2), QT.Q6_K)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file(progress=True)
    w.close()
    print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB)")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--llama3", action="store_true", help="write nano-llama3.gguf (llama3 RoPE scaling, tied output, Q8_0)")
    ap.add_argument("--llama8b", type=Path, metavar="PATH",
                    help="write the Llama-3-8B-shaped Q4_K speed fixture to PATH instead")
    args = ap.parse_args()
    if args.llama8b:
        build_llama8b(args.llama8b)
    else:
        build(args.llama3)


if __name__ == "__main__":
    main()
