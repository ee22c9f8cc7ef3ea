#!/usr/bin/env python3
"""Tiny random-weight Qwen2 / Qwen3 checkpoints and RoPE-scaled Llama / Qwen2 checkpoints, saved by
`transformers`, and their goldens: what `hearth quantize DIR OUT.gguf --type f32` imports and
tests/qwen.rs runs on the CPU (exact and default paths) and on the GPU.

Makes, under tests/data/import/:

    tiny-qwen2/         Qwen2ForCausalLM: Q/K/V biases, NeoX RoPE, tied head (as Qwen2.5 0.5B),
                        byte-level BPE with Qwen2's pre-tokenizer (the `qwen2` regex: digits one
                        by one) and an NFC normalizer, special tokens after the learned ones
                        (<|endoftext|>, <|im_start|>, <|im_end|>), ChatML template, no BOS.
    tiny-qwen3/         Qwen3ForCausalLM: per-head Q/K RMSNorm, no biases, head_dim 32 with 4
                        heads over hidden 64 (q width 128 != hidden, as every Qwen3), untied head.
    tiny-qwen2-yarn/    tiny-qwen2 with rope_parameters YaRN, factor 4, original context 128.
    tiny-llama-linear/  LlamaForCausalLM with linear RoPE scaling, factor 4.
    tiny-llama-yarn/    LlamaForCausalLM with YaRN, factor 4, original context 128, beta_fast 16.
    tiny-llama3-rope/   LlamaForCausalLM with Llama 3 scaling, factor 8, low 1, high 4,
                        original context 32 (Hearth's import turns it into rope_freqs.weight).
    <name>.json         the golden, as tools/make_import_models.py writes it (prompt_text,
                        prompt_ids, greedy_ids, greedy_margins, last_logits per prompt), with
                        "rope" (the checkpoint's rope_parameters), "inv_freq" and
                        "attention_scaling" (transformers' RoPE table and cos/sin factor, which
                        Hearth's are checked against) and, for the Qwen models,
                        "tokenizer_cases" (text and ids, no special tokens added, special-token
                        text parsed as the special token).

The prompts include one of over 300 tokens (`beyond`), so every scaled model runs far past the
original context its scaling names (128 or 32 tokens: the positions the scaling is for); each
max_position_embeddings is 512 (4x the YaRN models' original context, their factor). The Llama models reuse
tiny-llama's tokenizer (SmolLM2 style), the Qwen ones share the Qwen tokenizer trained here.
Weights: make_import_models.randomize (N(0, 1/fan_in) * 1.5, norms around 1); Qwen2's biases
N(0, 0.5) so that a dropped bias moves every logit; Q/K norm weights around 1.

Usage (from the repository root, in the tools venv):

    .venv-tools/bin/python tools/make_qwen_models.py
"""

from __future__ import annotations

import json
import shutil
import sys
import unicodedata
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_import_models as base  # noqa: E402

OUT = base.OUT

# llama.cpp's `qwen2` pre-tokenizer regex as Qwen's tokenizer.json spells it.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Strings for the Qwen tokenizer's own check: each pre-tokenizer alternative of the `qwen2` regex
# (case-insensitive contractions, a letter run with one leading non-letter, single digits,
# punctuation runs with trailing newlines, newline runs, trailing spaces) and non-ASCII text.
TOKENIZER_TEXTS = [
    "",
    " ",
    "Hello world",
    "  leading and trailing  ",
    "I'm sure THEY'RE right, it's what We'LL do; you'd've",
    "In 1869 the railway reached 3000 miles: 3.14159 and 2,718,281",
    "line one\nline two\n\n\nthree\r\nfour",
    "tabs\tand\t\tspaces    between",
    "end with spaces   ",
    "punctuation!!! ... ??? --- (brackets) [x] {y}",
    "def f(x):\n    return x * 2  # comment\n",
    "Über den Bergen liegt Schnee; le soleil se lève à l'est",
    "日本語のテキストと中文文本",
    "emoji 🙂👍🏽 and ZWJ 👩‍💻",
    "mixed123abc456 and 12ab34",
    "<|im_start|>user\nhi<|im_end|>",
]

LONG = " ".join(line for line in base.CORPUS.splitlines()[:9] if line)
PROMPTS = base.PROMPTS + [("beyond", LONG)]


def qwen_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False, trim_offsets=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(base.corpus_lines(), trainer)
    # As in Qwen's vocabulary, the special tokens follow the learned ones.
    tok.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    fast.chat_template = template
    return fast


def randomize(model: torch.nn.Module, seed: int) -> None:
    base.randomize(model, 1.0, seed)
    g = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def save(model, tok, dir_: Path, head_scale: float) -> None:
    if not model.config.tie_word_embeddings:
        with torch.no_grad():
            # As tiny-llama: a larger head spreads the logits for clear greedy margins.
            model.lm_head.weight.mul_(head_scale)
    model.save_pretrained(dir_, safe_serialization=True)
    tok.save_pretrained(dir_)


def qwen2(dir_: Path, rope: dict | None, tied: bool, seed: int) -> None:
    tok = qwen_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        rope_parameters=rope or {"rope_type": "default", "rope_theta": 1_000_000.0},
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    randomize(model, seed)
    if tied:
        with torch.no_grad():
            model.model.embed_tokens.weight.mul_(3.0)
    save(model, tok, dir_, 4.0)


def qwen3(dir_: Path) -> None:
    tok = qwen_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = Qwen3ForCausalLM(config)
    randomize(model, 7)
    save(model, tok, dir_, 4.0)


def llama(dir_: Path, rope: dict, seed: int) -> None:
    tok = base.smollm_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters=rope,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    base.randomize(model, 1.0, seed)
    save(model, tok, dir_, 4.0)


YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}

MODELS = {
    "tiny-qwen2": lambda d: qwen2(d, None, tied=True, seed=3),
    "tiny-qwen3": qwen3,
    "tiny-qwen2-yarn": lambda d: qwen2(
        d, {**YARN, "rope_theta": 10_000.0}, tied=False, seed=4
    ),
    "tiny-llama-linear": lambda d: llama(
        d, {"rope_type": "linear", "factor": 4.0, "rope_theta": 10_000.0}, seed=5
    ),
    "tiny-llama-yarn": lambda d: llama(
        d, {**YARN, "beta_fast": 16.0, "rope_theta": 10_000.0}, seed=6
    ),
    "tiny-llama3-rope": lambda d: llama(
        d,
        {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
            "rope_theta": 10_000.0,
        },
        seed=8,
    ),
}


def rope_facts(dir_: Path) -> dict:
    """transformers' own RoPE tables for the saved checkpoint."""
    model = AutoModelForCausalLM.from_pretrained(dir_, dtype=torch.float32)
    rotary = model.model.rotary_emb
    return {
        "rope": {k: v for k, v in model.config.rope_parameters.items()},
        "inv_freq": base.f32_list(rotary.inv_freq),
        "attention_scaling": float(rotary.attention_scaling),
    }


def main() -> None:
    base.PROMPTS[:] = PROMPTS
    OUT.mkdir(parents=True, exist_ok=True)
    names = sys.argv[1:] or list(MODELS)
    for name in names:
        dir_ = OUT / name
        if dir_.exists():
            shutil.rmtree(dir_)
        MODELS[name](dir_)
        g = base.goldens(dir_, name)
        g.update(rope_facts(dir_))
        if name.startswith("tiny-qwen"):
            tok = AutoTokenizer.from_pretrained(dir_)
            g["tokenizer_cases"] = [
                {"text": t, "ids": tok(t, add_special_tokens=False)["input_ids"]}
                for t in TOKENIZER_TEXTS
            ]
            for c in g["tokenizer_cases"]:
                assert tok.decode(c["ids"]) == unicodedata.normalize("NFC", c["text"]), c
        (OUT / f"{name}.json").write_text(json.dumps(g, separators=(",", ":")) + "\n")
        size = sum(p.stat().st_size for p in dir_.iterdir())
        print(f"{name}: {sorted(p.name for p in dir_.iterdir())}, {size / 1e6:.2f} MB")
        print(f"  rope {g['rope']}, attention_scaling {g['attention_scaling']:.6f}")
        for c in g["cases"]:
            print(
                f"  {c['name']}: {len(c['prompt_ids'])} prompt ids, min margin "
                f"{min(c['greedy_margins']):.3f}, logits std "
                f"{torch.tensor(c['last_logits']).std(unbiased=False):.2f}"
            )


if __name__ == "__main__":
    main()
