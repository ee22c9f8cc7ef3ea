#!/usr/bin/env python3
"""PEFT fixtures and goldens for the nano Llama model (tests/data/nano/nano-llama.gguf), made by
transformers + PEFT in fp32 on the CPU -- the reference for Hearth's PEFT reader (src/train/peft.rs)
and for the PEFT parity test (tests/peft.rs).

The model is loaded as make_model_goldens.py loads it (AutoModelForCausalLM.from_pretrained with
gguf_file=: transformers dequantizes every tensor and un-permutes attn_q / attn_k from llama.cpp's
layout), then wrapped by peft.get_peft_model. Makes:

  tests/data/peft/nano-lora/              a PEFT LoRA adapter "made by others": r 4, lora_alpha 8,
                                          use_rslora (scale 8/sqrt(4) = 4), all seven projections,
                                          A as PEFT initialises it, B drawn N(0, 0.05) (seed 1) so the
                                          adapter changes the output; saved by save_pretrained
  tests/data/golden/nano-peft-logits.json every logit at every position of one 12-token input, with
                                          that adapter (PEFT in PyTorch)
  tests/data/peft/nano-parity-init/       PEFT's own initial adapter (torch seed 0: A Kaiming-uniform,
                                          B zero), r 4, lora_alpha 8, all seven projections
  tests/data/golden/nano-peft-parity.json PEFT's training from that adapter: 24 AdamW steps (lr 2e-3,
                                          betas 0.9/0.999, eps 1e-8, weight decay 0.01), 2 warmup steps
                                          then linear decay to 0 (Hearth's schedule: warmup lr*(s+1)/2),
                                          gradient norm clipped to 1.0 (torch.nn.utils.clip_grad_norm_),
                                          no dropout; every step one batch of the same 4 sequences of 20
                                          tokens (ids drawn with NumPy seed 7), loss = mean cross-entropy
                                          over the targets (the first 5 tokens of each are a prompt: no
                                          targets); the loss and pre-clipping gradient norm of each step

PEFT's save_pretrained also writes a README.md model card, removed here; base_model_name_or_path is
set to the nano file's repository path, and target_modules (a set in PEFT) is written sorted. Deterministic: running it again rewrites the same files.

    /work/venv-torch/bin/python tools/make_peft_goldens.py
"""

import json
import pathlib
import sys

import numpy as np
import torch
from peft import LoraConfig, get_peft_model

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_model_goldens import f32, load  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parent.parent
MODEL = ROOT / "tests/data/nano/nano-llama.gguf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
STEPS, LR, WARMUP, WD, CLIP = 24, 2e-3, 2, 0.01, 1.0
N_SEQ, SEQ_LEN, N_PROMPT = 4, 20, 5


def peft_model(rslora: bool, seed: int):
    model, _, _ = load(MODEL, smollm_pre=False)
    torch.manual_seed(seed)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=TARGETS, lora_dropout=0.0, bias="none",
                     use_rslora=rslora, task_type="CAUSAL_LM")
    m = get_peft_model(model, cfg)
    m.peft_config["default"].base_model_name_or_path = "tests/data/nano/nano-llama.gguf"
    return m


def save(m, name: str):
    out = ROOT / "tests/data/peft" / name
    m.save_pretrained(str(out))
    (out / "README.md").unlink(missing_ok=True)
    # PEFT keeps target_modules as a set: sorted, so that the file does not change between runs.
    cfg_path = out / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["target_modules"] = sorted(cfg["target_modules"])
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def logits_golden():
    m = peft_model(rslora=True, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    save(m, "nano-lora")
    m.eval()
    n_vocab = m.config.vocab_size
    tokens = np.random.default_rng(3).integers(0, n_vocab, size=12).tolist()
    with torch.no_grad():
        logits = m(input_ids=torch.tensor([tokens])).logits[0]
    out = {
        "model": "nano/nano-llama.gguf",
        "adapter": "peft/nano-lora",
        "tokens": tokens,
        "n_vocab": n_vocab,
        "logits": [f32(x) for x in logits.reshape(-1).tolist()],
    }
    path = ROOT / "tests/data/golden/nano-peft-logits.json"
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {path.relative_to(ROOT)}")


def lr_factor(step: int) -> float:
    """Hearth's AdamWConfig::lr_at with Decay::Linear."""
    if step < WARMUP:
        return (step + 1) / WARMUP
    return max(0.0, 1.0 - (step - WARMUP) / max(1, STEPS - WARMUP))


def parity_golden():
    m = peft_model(rslora=False, seed=0)
    save(m, "nano-parity-init")
    m.train()
    n_vocab = m.config.vocab_size
    ids = np.random.default_rng(7).integers(0, n_vocab, size=(N_SEQ, SEQ_LEN))
    labels = ids.copy()
    labels[:, :N_PROMPT] = -100
    ids_t, labels_t = torch.tensor(ids), torch.tensor(labels)
    params = [p for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, betas=(0.9, 0.999), eps=1e-8, weight_decay=WD)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    losses, norms = [], []
    for _ in range(STEPS):
        # One batch of sequences of equal target counts: the mean over all targets is the mean
        # of the sequences' means, which Hearth's gradient accumulation averages.
        loss = m(input_ids=ids_t, labels=labels_t).loss
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, CLIP)
        opt.step()
        sched.step()
        opt.zero_grad()
        losses.append(f32(loss.item()))
        norms.append(f32(norm.item()))
    out = {
        "model": "nano/nano-llama.gguf",
        "init": "peft/nano-parity-init",
        "sequences": ids.tolist(),
        "n_prompt": N_PROMPT,
        "steps": STEPS,
        "lr": LR,
        "warmup_steps": WARMUP,
        "weight_decay": WD,
        "max_grad_norm": CLIP,
        "losses": losses,
        "grad_norms": norms,
    }
    path = ROOT / "tests/data/golden/nano-peft-parity.json"
    path.write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; wrote {path.relative_to(ROOT)}")


def main():
    torch.set_num_threads(1)
    logits_golden()
    parity_golden()


if __name__ == "__main__":
    main()
