#!/usr/bin/env python3
"""Tiny random-weight Hugging Face checkpoints, saved by `transformers`, and their goldens: what
`hearth quantize DIR OUT.gguf` must import (tests/import.rs).

Makes, under tests/data/import/:

    tiny-llama/    LlamaForCausalLM, SmolLM2-style: byte-level BPE tokenizer with the `smollm`
                   pre-tokenizer (digits one by one, then GPT-2's byte-level regex), ChatML
                   template, untied head (lm_head.weight), fp32, one model.safetensors.
    tiny-gemma3/   Gemma3ForCausalLM: SentencePiece-style BPE with byte fallback (spaces become
                   "▁", <0xNN> byte tokens), Gemma's turn template, tied head, bf16 weights in
                   two shards with model.safetensors.index.json, 6 layers (5 sliding-window
                   layers with an 8-token window, layer 5 global) so both attention kinds and
                   the window run on prompts longer than it.
    <name>.json    the golden: per prompt, prompt_text, prompt_ids (the saved tokenizer's ids,
                   special tokens as it adds them), greedy_ids (16 argmax steps, first index on
                   ties, no EOS stop, decoded with the KV cache), greedy_margins (top-1 minus
                   top-2 logit per step) and last_logits (every logit at the last prompt
                   position).

The tokenizers are trained here with the `tokenizers` library on a small English corpus written
for this script (tools/import_corpus.txt is not needed: the corpus is below), so they are real BPE
tokenizers with a few hundred tokens, not copies of a published vocabulary. The weights are drawn
from N(0, 1/fan_in)-scaled normals with a fixed seed, larger than transformers' default init so
that logits spread over several units and greedy steps are decided by clear margins; norm weights
are drawn around their neutral value (1 for Llama, 0 for Gemma, whose RMSNorm multiplies by
1 + w) so that a missed or doubled "+1" or a wrong Q/K permutation changes every logit.

The goldens come from the saved checkpoint reloaded with from_pretrained in fp32 on the CPU
(Gemma: the bf16 weights are upcast exactly; attn_implementation="eager"). The script checks that
the cached greedy decode equals one full forward pass over prompt + greedy ids.

Usage (from the repository root, in the tools venv):

    .venv-tools/bin/python tools/make_import_models.py
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "data" / "import"
N_GREEDY = 16

CORPUS = """\
The hearth keeps the house warm through the long winter nights.
A small model can run on a laptop when its weights are stored in four or eight bits.
In 1869 the railway reached the coast, and 42 towns grew along its 3000 miles.
She counted the stars: 7, 8, 9, and then 10 more above the northern hills.
Bread, cheese and apples were carried to the market every Saturday morning.
The river runs past the mill, under the old stone bridge, and into the sea.
Questions and answers: what is the weather like today? It is cold and bright.
Numbers such as 3.14159 and 2.71828 appear in many formulas of physics.
The quick brown fox jumps over the lazy dog while the cat sleeps by the fire.
Engines turn heat into work; a good engine wastes as little of it as it can.
Tokens are pieces of text, and a tokenizer splits every sentence into them.
He wrote letters to his sister in the city, and she answered each one by return.
Trees lose their leaves in autumn and grow them again when spring returns.
The library opens at nine o'clock and closes at five in the afternoon.
Water boils at 100 degrees and freezes at 0 on the Celsius scale.
Über den Bergen liegt Schnee, und die Kinder spielen im Garten.
Le soleil se lève à l'est et se couche à l'ouest chaque jour.
"""

PROMPTS = [
    ("plain", "The hearth keeps the house warm"),
    ("digits", "In 1869 the railway reached 42 towns, and 7 more"),
    ("long", "The river runs past the mill, under the old stone bridge. Trees lose their leaves"),
]


def corpus_lines():
    # Repeated so pair counts exceed the trainer's minimum frequency.
    return [line for line in CORPUS.splitlines() if line] * 4


def smollm_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE with SmolLM2's pre-tokenizer and its special tokens at ids 0..2."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus_lines(), trainer)
    template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        unk_token="<|endoftext|>",
        pad_token="<|im_end|>",
    )
    fast.chat_template = template
    return fast


def gemma_tokenizer() -> PreTrainedTokenizerFast:
    """SentencePiece-style BPE laid out as Gemma's: <pad> <eos> <bos> <unk>, the turn tokens,
    256 byte-fallback tokens, then the learned pieces in merge order."""
    space = "\u2581"
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.Replace(" ", space)
    # Pieces start at a "▁" (SentencePiece never merges across one).
    trainer_tok.pre_tokenizer = pre_tokenizers.Split(space, behavior="merged_with_next")
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False)
    trainer_tok.train_from_iterator(corpus_lines(), trainer)
    learned = json.loads(trainer_tok.to_str())["model"]
    learned_vocab = sorted(learned["vocab"].items(), key=lambda kv: kv[1])
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    vocab: dict[str, int] = {}
    for t in specials + [f"<0x{b:02X}>" for b in range(256)]:
        vocab[t] = len(vocab)
    for t, _ in learned_vocab:
        if t not in vocab:
            vocab[t] = len(vocab)
    tok = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Replace(" ", space)
    tok.pre_tokenizer = pre_tokenizers.Split(" ", behavior="merged_with_previous")
    tok.decoder = decoders.Sequence(
        [decoders.Replace(space, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens(specials)
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    template = (
        "{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + "
        "('model' if message['role'] == 'assistant' else message['role']) + '\\n' + "
        "message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        pad_token="<pad>",
    )
    fast.chat_template = template
    return fast


def randomize(model: torch.nn.Module, norm_center: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(norm_center + 0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / np.sqrt(p.shape[1]) * 1.5)


def f32_list(t: torch.Tensor) -> list[float]:
    # float(np.float32) gives the f32's exact value; repr of a Python float is the shortest
    # decimal reading back to that double, which reads back to the same f32.
    return [float(x) for x in t.detach().to(torch.float32).numpy()]


def goldens(dir_: Path, name: str) -> dict:
    tok = AutoTokenizer.from_pretrained(dir_)
    model = AutoModelForCausalLM.from_pretrained(
        dir_, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    cases = []
    for case_name, text in PROMPTS:
        ids = tok(text)["input_ids"]
        with torch.no_grad():
            out = model(torch.tensor([ids]), use_cache=True)
            logits = out.logits[0, -1]
            past = out.past_key_values
            greedy, margins = [], []
            step = logits
            for _ in range(N_GREEDY):
                top2 = torch.topk(step, 2)
                nxt = int(torch.argmax(step))
                greedy.append(nxt)
                margins.append(float(top2.values[0] - top2.values[1]))
                out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
                past = out.past_key_values
                step = out.logits[0, -1]
            full = model(torch.tensor([ids + greedy])).logits[0]
            again = torch.argmax(full[len(ids) - 1 : -1], dim=-1).tolist()
            assert again == greedy, f"{name}/{case_name}: cached decode differs from a full pass"
        cases.append(
            {
                "name": case_name,
                "prompt_text": text,
                "prompt_ids": ids,
                "greedy_ids": greedy,
                "greedy_margins": margins,
                "last_logits": f32_list(logits),
            }
        )
    return {"model": name, "n_vocab": model.config.vocab_size, "cases": cases}


def make_llama(dir_: Path) -> None:
    tok = smollm_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    randomize(model, 1.0, seed=1)
    with torch.no_grad():
        # A head 4x the others' scale spreads the logits (std ~6) for clear greedy margins.
        model.lm_head.weight.mul_(4.0)
    model.save_pretrained(dir_, safe_serialization=True)
    tok.save_pretrained(dir_)


def make_gemma3(dir_: Path) -> None:
    tok = gemma_tokenizer()
    config = Gemma3TextConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        max_position_embeddings=256,
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).to(torch.bfloat16)
    randomize(model, 0.0, seed=2)
    model.save_pretrained(dir_, safe_serialization=True, max_shard_size="300KB")
    tok.save_pretrained(dir_)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, make in [("tiny-llama", make_llama), ("tiny-gemma3", make_gemma3)]:
        dir_ = OUT / name
        if dir_.exists():
            shutil.rmtree(dir_)
        make(dir_)
        g = goldens(dir_, name)
        (OUT / f"{name}.json").write_text(json.dumps(g, separators=(",", ":")) + "\n")
        size = sum(p.stat().st_size for p in dir_.iterdir())
        print(f"{name}: {sorted(p.name for p in dir_.iterdir())}, {size / 1e6:.2f} MB")
        for c in g["cases"]:
            print(f"  {c['name']}: {len(c['prompt_ids'])} prompt ids, min margin {min(c['greedy_margins']):.3f}")


if __name__ == "__main__":
    main()
