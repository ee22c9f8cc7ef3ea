#!/usr/bin/env python3
"""Greedy text of the nano model (tests/data/nano/nano-llama.gguf) with a PEFT LoRA folder, by
transformers + PEFT (`PeftModel.from_pretrained`) in fp32: to check that a folder written by
`hearth finetune --out DIR` loads in PEFT and changes the output as `hearth run --adapter DIR` does.

    hearth finetune nano --data text.txt --out lora-peft --rank 4 --ctx 32 --lr 1e-2 --epochs 3
    hearth run nano --raw -n 12 --temperature 0 --adapter lora-peft "The capital of"
    /work/venv-torch/bin/python tools/check_peft_interop.py lora-peft "The capital of" 12
"""

import pathlib
import sys

import torch
from peft import PeftModel

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_model_goldens import load  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main():
    folder, prompt, n = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 12
    model, tok, _ = load(ROOT / "tests/data/nano/nano-llama.gguf", smollm_pre=False)
    model = PeftModel.from_pretrained(model, folder)
    model.eval()
    ids = tok(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=n, do_sample=False)
    print(repr(tok.decode(out[0, ids.shape[1]:])))


if __name__ == "__main__":
    main()
