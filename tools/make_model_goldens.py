#!/usr/bin/env python3
"""Reference logits and greedy continuations from `transformers` (fp32, CPU).

Makes tests/data/golden/<model>.json for:

    nano-llama    tests/data/nano/nano-llama.gguf   (6 raw prompts)
    nano-llama3   tests/data/nano/nano-llama3.gguf  (3 raw prompts)
    smollm2       SmolLM2-135M-Instruct.Q4_1.gguf   (4 raw + 3 chat-templated prompts)
    gemma3        gemma-3-270m-q4_k_m.gguf          (6 raw prompts, one longer than the 512-token window)

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

gemma3: Gemma 3 270M (a base model; raw prompts only). Its tokenizer is transformers' stock GGUF one
(SPM, no pre-tokenizer replacement); raw prompts get the BOS (id 2) the tokenizer adds, and
prompt_ids are exactly the ids fed to the model. The script checks transformers' Gemma 3 config
(sliding window 512, full attention on layers 5/11/17, RoPE theta 1e6 global / 1e4 local, scaling
query_pre_attn_scalar**-0.5, head_dim 256, sqrt(hidden) embedding scale, tied head, no softcapping)
and that the GGUF's norm weights already hold (1 + w): transformers subtracts 1 when loading and
its RMSNorm multiplies by (1 + w); every weight tensor is compared with gguf-py's dequantization.
These facts go into the JSON's "config_notes". For every case the cached decode is compared with
one full forward pass over prompt + greedy ids. The `long` prompt (620 ids) is also run with the
sliding window disabled, and the case records "window_matters" and "window_check".

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

    .venv-tools/bin/python tools/make_model_goldens.py [--models nano-llama,nano-llama3,smollm2,gemma3]
        [--smollm2 PATH/TO/SmolLM2-135M-Instruct.Q4_1.gguf] [--gemma3 PATH/TO/gemma-3-270m-q4_k_m.gguf]

The SmolLM2 GGUF is looked for at --smollm2, $HEARTH_SMOLLM2_GGUF, then /work/models/; the Gemma 3
GGUF at --gemma3, $HEARTH_GEMMA3_GGUF, then /work/models/. Their sha256 are checked.
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
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
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
# Gemma 3 270M: raw prompts with BOS; `paragraph` has 64 prompt ids, `long` 620 (> the 512-token window).
GEMMA3_PARAGRAPH = (
    "The old lighthouse stood on a rocky point at the mouth of the bay. For more than a hundred years its "
    "lamp had warned ships away from the reef, and the keepers who lived there kept a careful log of every "
    "storm, every wreck and every rescue. The last keeper left in 1962, and"
)
GEMMA3_LONG_TEXT = (
    "In the valley below the mountains there was a small town called Millbrook, built along both banks of a "
    "slow green river. The town had one bridge, one school, one bakery and a clock tower that was always "
    "four minutes late. Nobody minded the clock. The farmers came down from the hills on market days with "
    "carts of apples, cabbages, cheese and wool, and the children ran between the stalls while their parents "
    "argued cheerfully about prices.\n\n"
    "The clockmaker, Mr. Alder, lived in a narrow house next to the tower. He was a patient man with grey "
    "hair and very steady hands. Every spring he climbed the one hundred and twelve steps of the tower, "
    "opened the glass face of the clock, oiled the gears and listened to the pendulum for a long time. Then "
    "he would shake his head, close the glass and climb back down. When people asked him why he never set "
    "the clock right, he smiled and said that a town needs at least one thing that does not hurry.\n\n"
    "One winter the river froze from bank to bank for the first time in forty years. The ice was thick and "
    "clear, and under it the water moved like dark glass. The school closed for a week because the stove "
    "in the classroom had cracked, and the children spent every morning on the ice, sliding, falling and "
    "building small forts of snow. The baker sold hot bread through the window of her shop so that the door "
    "would not let the cold inside. In the evenings the whole town gathered around fires on the river bank, "
    "and the old people told stories about the great flood, the year of the locusts and the summer when the "
    "mill burned down.\n\n"
    "During that week Mr. Alder did not go onto the ice. He sat by his window mending watches for the "
    "farmers and music boxes for the children, and now and then he looked up at the tower as if he were "
    "waiting for something. The baker, who brought him bread every morning, said later that he had asked "
    "her twice what day it was, which was strange for a man who had spent his whole life with clocks.\n\n"
    "On the last night of the freeze, a storm came over the mountains. The wind pulled tiles from the roofs "
    "and the snow fell so thickly that nobody could see the other side of the street. At midnight the clock "
    "in the tower stopped. In the morning the sky was clean and blue, the river had begun to crack and "
    "groan, and Mr. Alder was already on the steps of the tower with his bag of tools. He worked all day. "
    "When he came down in the evening, the people of Millbrook were waiting for him in the square. The clock "
    "was running again, and for the first time anyone could remember, it showed exactly the right time.\n\n"
    "Nobody said anything for a while. Then the baker asked him what had changed. Mr. Alder looked up at the "
    "tower, then at the river, and then at the faces around him. He said that the clock had not changed at "
    "all, and that the town had simply caught up with it. The next morning"
)
GEMMA3_PROMPTS = [
    ("capital", "The capital of France is"),
    ("fibonacci", "def fibonacci(n):"),
    ("once_upon", "Once upon a time"),
    ("counting", "1, 2, 3, 4, 5,"),
    ("paragraph", GEMMA3_PARAGRAPH),
    ("long", GEMMA3_LONG_TEXT),
]
GEMMA3_WINDOW_CASES = ("paragraph", "long")  # also run with the sliding window disabled



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


def load(path: Path, rope_parameters: dict | None = None, smollm_pre: bool = True):
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
    if smollm_pre:
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


# GGUF tensor name (after "blk.N.") -> transformers parameter (after "model.layers.N.") for Gemma 3.
GEMMA3_TENSORS = {
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "attn_norm": "input_layernorm", "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm", "post_ffw_norm": "post_feedforward_layernorm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}


@torch.no_grad()
def check_gemma3(model, path: Path) -> dict:
    """Assert transformers' Gemma 3 setup for this GGUF and return the facts as "config_notes"."""
    import gguf
    c = model.config
    inner = model.model
    n_layer = c.num_hidden_layers
    full = [i for i, t in enumerate(c.layer_types) if t == "full_attention"]
    assert c.model_type == "gemma3_text" and type(model).__name__ == "Gemma3ForCausalLM"
    assert (c.hidden_size, n_layer, c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.intermediate_size) == \
        (640, 18, 4, 1, 256, 2048)
    assert c.sliding_window == 512, c.sliding_window
    assert full == [5, 11, 17], full
    assert all(t == "sliding_attention" for i, t in enumerate(c.layer_types) if i not in full)
    assert c.query_pre_attn_scalar == 256 and c.final_logit_softcapping is None and c.attn_logit_softcapping is None
    assert not c.use_bidirectional_attention and c.hidden_activation == "gelu_pytorch_tanh"
    assert c.tie_word_embeddings and model.lm_head.weight is inner.embed_tokens.weight

    # RoPE: per layer type, default (unscaled) inverse frequencies over the whole head_dim.
    rope = {}
    for lt, theta in (("full_attention", 1e6), ("sliding_attention", 1e4)):
        rp = c.rope_parameters[lt]
        assert rp["rope_type"] == "default" and rp["rope_theta"] == theta, (lt, rp)
        inv = getattr(inner.rotary_emb, f"{lt}_inv_freq")
        ref = 1.0 / (theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
        assert inv.dtype == torch.float32 and torch.equal(inv, ref), lt
        assert getattr(inner.rotary_emb, f"{lt}_attention_scaling") == 1.0
        rope[lt] = {"rope_type": "default", "theta": theta, "n_rot": c.head_dim, "attention_scaling": 1.0}
    scal = {float(layer.self_attn.scaling) for layer in inner.layers}
    assert scal == {256 ** -0.5} and scal == {0.0625}, scal
    for i, layer in enumerate(inner.layers):
        assert layer.self_attn.sliding_window == (None if i in full else 512)

    # Embedding scale: a float32 buffer holding f32(sqrt(hidden_size)), multiplied in the weight's dtype (fp32).
    es = inner.embed_tokens.embed_scale
    assert es.dtype == torch.float32 and float(es) == float(np.float32(np.sqrt(c.hidden_size))), (es, es.dtype)
    probe = torch.tensor([[2, 818]])
    assert torch.equal(inner.embed_tokens(probe), inner.embed_tokens.weight[probe] * es)

    # Every tensor against gguf-py's own dequantization; norm weights against (transformers' weight + 1).
    params = dict(model.named_parameters())
    reader = gguf.GGUFReader(str(path))
    meta = {k: reader.fields[k].contents() for k in reader.fields if k.startswith("gemma3.")}
    n_norm, norm_err_plus1, norm_err_raw = 0, 0.0, 0.0
    blk0 = None
    for t in reader.tensors:
        if t.name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif t.name == "output_norm.weight":
            hf = "model.norm.weight"
        else:
            _, li, base, _w = t.name.split(".")
            hf = f"model.layers.{li}.{GEMMA3_TENSORS[base]}.weight"
        g = torch.from_numpy(np.array(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32, copy=True))
        h = params[hf].detach()
        g = g.reshape(h.shape)
        if t.name.endswith("norm.weight"):
            n_norm += 1
            norm_err_plus1 = max(norm_err_plus1, float((g - (h + 1)).abs().max()))
            norm_err_raw = max(norm_err_raw, float((g - h).abs().max()))
            if t.name == "blk.0.attn_norm.weight":
                blk0 = (g[:4].tolist(), h[:4].tolist(), float(g.mean()), float(h.mean()))
        else:
            assert torch.equal(g, h), f"{t.name} differs from {hf}"
    assert norm_err_plus1 == 0.0 and norm_err_raw > 0.5, (norm_err_plus1, norm_err_raw)
    print(f"  gemma3 config: full attention layers {full}, window {c.sliding_window}, rope theta 1e6/1e4, "
          f"scaling {scal}, embed scale {float(es)!r} (fp32); {n_norm} norm tensors: gguf == transformers + 1 exactly")

    return {
        "architecture": "gemma3 (transformers Gemma3ForCausalLM, model_type gemma3_text)",
        "gguf_metadata": {k: (float(f32(v)) if isinstance(v, float) else v) for k, v in sorted(meta.items())},
        "n_layer": n_layer, "hidden_size": c.hidden_size, "n_head": c.num_attention_heads,
        "n_head_kv": c.num_key_value_heads, "head_dim": c.head_dim, "ffn": c.intermediate_size,
        "rms_norm_eps": f32(c.rms_norm_eps),
        "sliding_window": c.sliding_window,
        "sliding_window_rule": "on a sliding layer the query at position i sees keys j with i - 512 < j <= i "
                               "(512 keys including itself; transformers' sliding_window_overlay kv_idx > q_idx - 512)",
        "layer_types": list(c.layer_types),
        "full_attention_layers": full,
        "sliding_window_pattern": "every 6th layer (i % 6 == 5) is full attention; not stored in the GGUF",
        "rope": rope,
        "rope_notes": "NeoX style (rotate_half: dim d pairs with d + 128) over all 256 head dims, applied after "
                      "q_norm/k_norm; full-attention theta is gemma3.rope.freq_base (1e6), sliding theta 1e4 is "
                      "not in the GGUF (transformers' default rope_local_base_freq, llama.cpp hardcodes 10000); "
                      "no rope scaling",
        "query_pre_attn_scalar": c.query_pre_attn_scalar,
        "attention_scale": f32(256 ** -0.5),
        "attention_notes": "scores = (q . k) * query_pre_attn_scalar**-0.5 = 1/16 (== head_dim**-0.5 for this "
                           "model), no attn logit softcapping; GQA 4 query heads share 1 KV head",
        "embed_scale": f32(float(es)),
        "embed_scale_notes": "inputs_embeds = token_embd row * f32(sqrt(640)) = 25.298222, a float32 buffer "
                             "multiplied in float32 (transformers casts it to the weight dtype; it would be "
                             "bf16 25.25 only when running in bf16); the tied output head uses the unscaled "
                             "token_embd",
        "tie_word_embeddings": True,
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "activation": "gelu_pytorch_tanh (tanh approximation): down(gelu(gate(x)) * up(x))",
        "block": "h = x + post_attention_norm(attn(attn_norm(x))); out = h + post_ffw_norm(ffn(ffn_norm(h))); "
                 "attn_q_norm / attn_k_norm are RMSNorms over each head's 256 dims before RoPE; output_norm last",
        "gguf_norm_weights_include_plus_one": True,
        "norm_notes": f"transformers' Gemma3RMSNorm computes x * rsqrt(mean(x^2) + eps) * (1 + w) in fp32, and its "
                      f"GGUF loader subtracts 1 from every *norm.weight; the GGUF already stores 1 + w: over all "
                      f"{n_norm} norm tensors max |gguf - (transformers + 1)| = {norm_err_plus1} and "
                      f"max |gguf - transformers| = {norm_err_raw}. blk.0.attn_norm.weight gguf[:4] = {blk0[0]}, "
                      f"transformers input_layernorm.weight[:4] = {blk0[1]} (means {blk0[2]:.4f} / {blk0[3]:.4f}). "
                      f"So multiply by the GGUF weight as stored; do not add 1 again",
        "qk_layout": "attn_q / attn_k are not permuted for gemma3 (transformers compares equal to gguf-py's "
                     "dequantization for every non-norm tensor)",
        "special_tokens": {"bos": 2, "eos": 1, "pad": 0, "add_bos": True},
    }


@torch.no_grad()
def greedy_ids(model, ids: list[int], n: int) -> list[int]:
    out = model(torch.tensor([ids]), use_cache=True)
    res = []
    for _ in range(n):
        nxt = int(torch.argmax(out.logits[0, -1]))
        res.append(nxt)
        out = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)
    return res


@torch.no_grad()
def window_check(model, ids: list[int], greedy: list[int]) -> dict:
    """Last-prompt-position logits and greedy ids with the sliding window as is and disabled."""
    c = model.config
    with_w = model(torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[0, -1].float()
    saved = c.sliding_window
    try:
        c.sliding_window = 1 << 30
        without = model(torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[0, -1].float()
        greedy_nw = greedy_ids(model, ids, N_GEN)
    finally:
        c.sliding_window = saved
    diff = float((with_w - without).abs().max())
    same = next((k for k, (a, b) in enumerate(zip(greedy, greedy_nw)) if a != b), len(greedy))
    res = {"n_prompt": len(ids), "last_logits_max_abs_diff": f32(diff),
           "argmax_with_window": int(torch.argmax(with_w)), "argmax_without_window": int(torch.argmax(without)),
           "greedy_steps_equal_without_window": same}
    print(f"      window check: {len(ids)} ids, max |logit diff| without window {diff:.4g}, "
          f"greedy equal for {same}/{len(greedy)} steps")
    return res


@torch.no_grad()
def run_case(model, tok, stock, port, name: str, text: str, chat: bool, messages=None,
             full_check: bool = False) -> dict:
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

    greedy, margins, steps = [], [], []
    for _ in range(N_GEN):
        if full_check:
            steps.append(logits.clone())
        top2 = torch.topk(logits, 2)
        nxt = int(torch.argmax(logits))
        assert nxt == int(top2.indices[0]) or float(top2.values[0]) == float(top2.values[1])
        greedy.append(nxt)
        margins.append(f32(top2.values[0] - top2.values[1]))
        out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        logits = out.logits[0, -1].to(torch.float32)

    diag = None
    if full_check:
        # The cached decode against one full forward pass over prompt + greedy ids (no cache).
        full = model(torch.tensor([ids + greedy[:-1]]), use_cache=False, logits_to_keep=N_GEN).logits[0].float()
        dd = float((full - torch.stack(steps)).abs().max())
        bad = [k for k in range(N_GEN) if int(torch.argmax(full[k])) != greedy[k]]
        assert all(margins[k] <= 2 * dd for k in bad), (name, bad, dd)
        diag = {"decode_vs_full_max_abs_diff": dd, "argmax_mismatch_steps": bad}
        print(f"      cached decode vs full forward: max |diff| {dd:.3g}, argmax mismatches {bad}")

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
    if diag is not None:
        case["_diag"] = diag
    return case


def make(model_name: str, path: Path, raw_prompts, chats=(), rope_parameters=None) -> dict:
    print(f"{model_name}: {path}")
    gemma3 = model_name == "gemma3"
    model, tok, stock = load(path, rope_parameters, smollm_pre=not gemma3)
    port = llamacpp_tok.Vocab(str(path))
    if rope_parameters is not None:
        check_llama3_rope(model, path)
    config_notes = check_gemma3(model, path) if gemma3 else None
    cases = []
    for name, text in raw_prompts:
        case = run_case(model, tok, stock, port, name, text, chat=False, full_check=gemma3)
        if gemma3:
            assert case["prompt_ids"][0] == 2 and case["prompt_ids"].count(2) == 1, "expected exactly one BOS (2)"
            if name in GEMMA3_WINDOW_CASES:
                wc = window_check(model, case["prompt_ids"], case["greedy_ids"])
                case["window_matters"] = wc["last_logits_max_abs_diff"] > 1e-3
                case["window_check"] = wc
                if len(case["prompt_ids"]) <= model.config.sliding_window:
                    assert wc["last_logits_max_abs_diff"] == 0.0, wc
                else:
                    assert case["window_matters"], wc
        cases.append(case)
    for name, messages in chats:
        text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        cases.append(run_case(model, tok, stock, port, name, text, chat=True, messages=messages))
    digest = sha256(path)
    source = (f"transformers {transformers.__version__} (torch {torch.__version__}) fp32 CPU eager attention on "
              f"{path.name} sha256 {digest}")
    if rope_parameters is not None:
        source += "; rope_parameters " + json.dumps(rope_parameters, sort_keys=True) + " passed to from_pretrained"
    doc = {"model": model_name, "source": source, "n_vocab": model.config.vocab_size, "cases": cases}
    if gemma3:
        diags = {c["name"]: c.pop("_diag") for c in cases}
        config_notes["decode_vs_full_forward"] = {
            "note": "max |logit diff| between transformers' KV-cached decode and one full forward pass over "
                    "prompt + greedy ids (no cache), over the 32 greedy steps; argmax steps that differ",
            **{k: {"max_abs_diff": f32(v["decode_vs_full_max_abs_diff"]), "argmax_mismatch_steps": v["argmax_mismatch_steps"]}
               for k, v in diags.items()}}
        doc["config_notes"] = config_notes
        doc["min_margins"] = {c["name"]: {"min": min(c["greedy_margins"]),
                                          "step": c["greedy_margins"].index(min(c["greedy_margins"]))}
                              for c in cases}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{model_name}.json"
    out.write_text(json.dumps(doc, ensure_ascii=False, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)} ({out.stat().st_size} bytes)")
    return doc


def find_gguf(arg: str | None, env: str, filename: str, expected: str, flag: str) -> Path:
    for cand in (arg, os.environ.get(env), f"/work/models/{filename}"):
        if cand and Path(cand).is_file():
            p = Path(cand)
            digest = sha256(p)
            if digest != expected:
                sys.exit(f"{p}: sha256 {digest} is not the expected {expected}")
            return p
    sys.exit(f"{filename} not found: pass {flag} PATH or set {env}")


def find_smollm2(arg: str | None) -> Path:
    return find_gguf(arg, "HEARTH_SMOLLM2_GGUF", "SmolLM2-135M-Instruct.Q4_1.gguf", SMOLLM2_SHA256, "--smollm2")


def find_gemma3(arg: str | None) -> Path:
    return find_gguf(arg, "HEARTH_GEMMA3_GGUF", "gemma-3-270m-q4_k_m.gguf", GEMMA3_SHA256, "--gemma3")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="nano-llama,nano-llama3,smollm2,gemma3")
    ap.add_argument("--smollm2", default=None, help="path to SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--gemma3", default=None, help="path to gemma-3-270m-q4_k_m.gguf")
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
        elif m == "gemma3":
            make(m, find_gemma3(args.gemma3), GEMMA3_PROMPTS)
        else:
            sys.exit(f"unknown model {m}")


if __name__ == "__main__":
    main()
