#!/usr/bin/env python3
"""Reference logits of Gemma 3 270M on a long prompt from `transformers` (fp32, CPU, eager).

Makes tests/data/golden/gemma3-long.json: the first N_IDS ids (BOS included) of the Book of
Genesis (KJV, public domain; tools/genesis_text.sh) as Gemma 3's tokenizer gives them, and the
logits at the last position of each prefix in CUTS (the 64 highest [id, logit], highest first,
and {max, mean, std} of all of them), from one forward pass over the whole prompt: the logits at
position n-1 depend only on ids[:n] (causal). The prompt is far longer than the 512-token
sliding window of the local layers, so the test exercises tiled attention over many key blocks
and chunks, the window and the global layers at depth. Model loading, the fp32 check and the
float format are those of make_model_goldens.py (imported).

Usage (from the repository root, in the tools venv, with the Debian packages bible-kjv and
bible-kjv-text installed):

    .venv-tools/bin/python tools/make_long_golden.py [--gemma3 PATH/TO/gemma-3-270m-q4_k_m.gguf]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_model_goldens import N_TOP, OUT_DIR, REPO, f32, find_gemma3, load, sha256  # noqa: E402

N_IDS = 3072
CUTS = [700, 1601, 2400, 3072]


def genesis() -> str:
    script = REPO / "tools" / "genesis_text.sh"
    return subprocess.run(["bash", str(script)], check=True, capture_output=True, text=True).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--gemma3", default=None, help="path to gemma-3-270m-q4_k_m.gguf")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    path = find_gemma3(args.gemma3)
    model, tok, _ = load(path, smollm_pre=False)
    assert model.config.sliding_window == 512 and model.config.final_logit_softcapping is None
    ids = tok(genesis())["input_ids"][:N_IDS]
    assert len(ids) == N_IDS and ids[0] == 2 and ids.count(2) == 1, "expected one BOS (2) and enough text"
    with torch.no_grad():
        hidden = model.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        cuts = []
        for n in CUTS:
            logits = model.lm_head(hidden[n - 1]).float()
            top = torch.topk(logits, N_TOP)
            cuts.append({
                "n": n,
                "logits_top": [[int(i), f32(v)] for v, i in zip(top.values.tolist(), top.indices.tolist())],
                "logits_stats": {"max": f32(logits.max()), "mean": f32(logits.mean()),
                                 "std": f32(logits.std(unbiased=False))},
            })
    source = (f"transformers {transformers.__version__} (torch {torch.__version__}) fp32 CPU eager attention on "
              f"{path.name} sha256 {sha256(path)}; text: tools/genesis_text.sh, tokenized by transformers")
    doc = {"model": "gemma3", "source": source, "prompt_ids": ids, "cuts": cuts}
    out = OUT_DIR / "gemma3-long.json"
    out.write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
