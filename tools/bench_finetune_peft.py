#!/usr/bin/env python3
"""The PyTorch + PEFT side of tools/bench_finetune.sh: LoRA training steps on a GGUF model held in
fp32 (transformers dequantizes it), timed, on the CPU with a fixed number of threads.

Reads token ids (a JSON list, as `hearth tokenize` prints them) and cuts them as Hearth's plain-text
loader does (chunks of --seq ids, the last one kept if it has at least 2), so both engines train on
the same sequences: one sequence per optimizer step, labels = the ids (loss on every next token),
LoRA r 8, alpha 16, dropout 0 on q/k/v/o/gate/up/down, AdamW at lr 2e-4. Prints one JSON line:
steps, tokens, train_s (the steps only, model load excluded, as Hearth's tokens/s), train_cpu_s
(the CPU time of those steps, all threads), tokens_per_s, load_s, loss_first, loss_last. Peak RSS is measured around the process by the shell script.

    python tools/bench_finetune_peft.py --gguf smollm2.gguf --ids ids.json [--seq 256] [--threads 2]
"""

import argparse
import json
import pathlib
import tempfile
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ids", required=True)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ids = json.loads(pathlib.Path(args.ids).read_text())
    seqs = [ids[i:i + args.seq] for i in range(0, len(ids), args.seq)]
    seqs = [s for s in seqs if len(s) >= 2]

    start = time.perf_counter()
    # transformers wants a folder and a file name; a store blob has no .gguf name.
    with tempfile.TemporaryDirectory() as d:
        link = pathlib.Path(d) / "model.gguf"
        link.symlink_to(pathlib.Path(args.gguf).resolve())
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=link.name, dtype=torch.float32)
    cfg = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, target_modules=TARGETS,
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, cfg)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=2e-4)
    load_s = time.perf_counter() - start

    losses = []
    start, cpu_start = time.perf_counter(), time.process_time()
    for s in seqs:
        x = torch.tensor([s])
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    train_s = time.perf_counter() - start
    cpu_s = time.process_time() - cpu_start
    n_tokens = sum(len(s) for s in seqs)
    print(json.dumps({
        "steps": len(seqs),
        "tokens": n_tokens,
        "train_s": round(train_s, 3),
        "train_cpu_s": round(cpu_s, 3),
        "tokens_per_s": round(n_tokens / train_s, 1),
        "load_s": round(load_s, 3),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
    }))


if __name__ == "__main__":
    main()
