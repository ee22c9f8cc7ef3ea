#!/usr/bin/env python3
"""Every file `hearth quantize` writes, for every --type, read back by independent readers.

For each SOURCE (a GGUF file, or a Hugging Face checkpoint folder that Hearth imports) and each
target type, the script runs `hearth quantize SOURCE OUT --type T` and then:

1. reads OUT with the `gguf` package (gguf-py, llama.cpp's own Python reader): the header parses,
   `general.file_type` is T's llama_ftype, every 1-D tensor is F32, every matrix has T's block
   type or one of the fallbacks llama.cpp's mixtures use, and each tensor's shape and values
   match the source:
   - GGUF source: same names, order and shapes; dequantized values within a relative RMS error
     of the source's dequantized values;
   - checkpoint source: the tensor names are the converter's for that architecture, the shapes
     the checkpoint's reversed, and the values the checkpoint's after the converter's own
     transforms re-done here in NumPy (Llama Q/K rows permuted as convert_hf_to_gguf.py's
     `LlamaModel.permute`, Gemma norms + 1), within the same relative RMS error;
2. loads OUT in llama.cpp and generates: `llama-completion -m OUT -p PROMPT -n 20 --temp 0
   -no-cnv` must exit 0 and print a continuation; for the F32 import of each tiny checkpoint the
   greedy continuation must start with the bytes of the 16 tokens transformers chose (the
   golden's `greedy_ids`).

Relative RMS bounds: 1e-6 for F32, 2e-3 F16, 1e-2 BF16, 1e-2 Q8_0, 0.12 for 4-6-bit types
(Q4_0 on Gaussian weights is ~0.09, see tests/quant.rs).

Usage (from the repository root, in the tools venv):

    .venv-tools/bin/python tools/check_interop.py --hearth target/release/hearth \\
        --llama-bin PEER/build/bin [--types f32,q8_0,...] SOURCE [SOURCE ...]

Exit status 0 when every check passed; one line per (source, type) either way.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType as Q
from gguf.quants import dequantize

TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1",
         "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k"]
FTYPE = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_1": 3, "q5_0": 8, "q5_1": 9,
         "q4_k_s": 14, "q4_k_m": 15, "q5_k_s": 16, "q5_k_m": 17, "q6_k": 18}
# Block types a matrix may get under each target: its default, the higher types a mixture gives
# some tensors (output, attn_v, ffn_down, token_embd), and the legacy fallbacks for rows that are
# not whole 256-value K-quant blocks.
LEGACY = {Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q8_0}
K = {Q.Q4_K, Q.Q5_K, Q.Q6_K}
ALLOWED = {
    "f32": {Q.F32}, "f16": {Q.F16}, "bf16": {Q.BF16},
    "q8_0": {Q.Q8_0}, "q4_0": {Q.Q4_0, Q.Q6_K, Q.Q8_0, Q.Q4_1, Q.Q5_0, Q.Q5_1},
    "q4_1": {Q.Q4_1, Q.Q6_K, Q.Q8_0, Q.Q5_0, Q.Q5_1}, "q5_0": {Q.Q5_0, Q.Q6_K, Q.Q8_0, Q.Q5_1},
    "q5_1": {Q.Q5_1, Q.Q6_K, Q.Q8_0},
    "q4_k_s": K | LEGACY, "q4_k_m": K | LEGACY, "q5_k_s": K | LEGACY, "q5_k_m": K | LEGACY,
    "q6_k": K | LEGACY,
}
BOUND = {"f32": 1e-6, "f16": 2e-3, "bf16": 1e-2, "q8_0": 1e-2}
PROMPTS = {"tiny-llama": "The hearth keeps the house warm",
           "tiny-gemma3": "The hearth keeps the house warm"}


def rel_rmse(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    denom = np.sqrt((a * a).mean()) or 1.0
    return float(np.sqrt(((a - b) ** 2).mean()) / denom)


def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.permute, in NumPy."""
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def checkpoint_reference(src: Path) -> dict[str, np.ndarray]:
    """GGUF name -> expected f32 values (row-major, PyTorch shape) of a checkpoint folder."""
    from safetensors.numpy import load_file
    import torch  # bf16 shards need torch to read
    from safetensors.torch import load_file as load_torch

    config = json.loads((src / "config.json").read_text())
    arch = config["architectures"][0]
    tensors: dict[str, np.ndarray] = {}
    for f in sorted(src.glob("*.safetensors")):
        for k, v in load_torch(f).items():
            tensors[k] = v.to(torch.float32).numpy()
    n_head, n_kv = config["num_attention_heads"], config.get("num_key_value_heads")
    gemma = arch == "Gemma3ForCausalLM"
    per_layer = {
        "input_layernorm": "attn_norm", "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
        "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
        "post_attention_layernorm": "post_attention_norm" if gemma else "ffn_norm",
        "pre_feedforward_layernorm": "ffn_norm", "post_feedforward_layernorm": "post_ffw_norm",
        "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
    }
    out = {}
    for name, w in tensors.items():
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        elif name == "lm_head.weight":
            g = "output.weight"
        else:
            parts = name.split(".")
            layer, rest = parts[2], ".".join(parts[3:-1])
            g = f"blk.{layer}.{per_layer[rest]}.weight"
        if not gemma and name.endswith("q_proj.weight"):
            w = permute(w, n_head)
        if not gemma and name.endswith("k_proj.weight"):
            w = permute(w, n_kv)
        if gemma and name.endswith("norm.weight"):
            w = w + 1.0
        out[g] = w
    return out


def check_file(out: Path, ty: str, reference, src_reader) -> list[str]:
    problems = []
    r = GGUFReader(out)
    ftype = r.fields["general.file_type"].contents()
    if ftype != FTYPE[ty]:
        problems.append(f"general.file_type {ftype}, want {FTYPE[ty]}")
    bound = BOUND.get(ty, 0.12)
    names = [t.name for t in r.tensors]
    if src_reader is not None:
        want_names = [t.name for t in src_reader.tensors]
        src = {t.name: t for t in src_reader.tensors}
    else:
        want_names = sorted(reference)
        names = sorted(names)
    if names != want_names:
        problems.append(f"tensor names differ: {sorted(set(names) ^ set(want_names))[:5]}")
        return problems
    for t in r.tensors:
        shape = [int(d) for d in t.shape]  # ggml order
        if src_reader is not None:
            s = src[t.name]
            want_shape = [int(d) for d in s.shape]
            ref = dequantize(s.data, s.tensor_type)
        else:
            ref = reference[t.name]
            want_shape = list(ref.shape[::-1])
        if shape != want_shape:
            problems.append(f"{t.name}: shape {shape}, want {want_shape}")
            continue
        one_d = sum(d > 1 for d in shape) <= 1
        if one_d and t.tensor_type != Q.F32:
            problems.append(f"{t.name}: 1-D tensor stored as {t.tensor_type.name}")
        if not one_d and t.tensor_type not in ALLOWED[ty]:
            problems.append(f"{t.name}: {t.tensor_type.name} is not a {ty} type")
        got = dequantize(t.data, t.tensor_type)
        err = rel_rmse(ref, got)
        if err > (1e-6 if one_d else bound):
            problems.append(f"{t.name}: relative RMS error {err:.2e} > {bound}")
    return problems


def llama_generate(bin_dir: Path, model: Path, prompt: str) -> tuple[bool, bytes]:
    # 20 tokens, so the 16 of the golden are all printed (llama-completion may hold back the
    # last one) and compared as a prefix.
    cmd = [str(bin_dir / "llama-completion"), "-m", str(model), "-p", prompt, "-n", "20",
           "--temp", "0", "-no-cnv", "-t", "2", "-c", "256", "--no-warmup"]
    # Bytes: a random model's continuation need not be valid UTF-8.
    p = subprocess.run(cmd, capture_output=True, timeout=300)
    text = p.stdout
    if p.returncode != 0:
        return False, (p.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1].encode()
    head = prompt.encode()
    return True, text[len(head):] if text.startswith(head) else text


def token_bytes(tok, ids: list[int]) -> bytes:
    """The bytes `ids` stand for: byte-level tokens through GPT-2's byte table, SentencePiece
    pieces with "▁" as a space and <0xNN> as the byte."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    decoder = {c: b for b, c in bytes_to_unicode().items()}
    out = b""
    for t in tok.convert_ids_to_tokens(ids):
        if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            out += bytes([int(t[3:5], 16)])
        elif all(c in decoder for c in t) and "\u2581" not in t:
            out += bytes(decoder[c] for c in t)
        else:
            out += t.replace("\u2581", " ").encode()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("sources", nargs="+")
    ap.add_argument("--hearth", default="target/release/hearth")
    ap.add_argument("--llama-bin", required=True)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()
    bin_dir = Path(args.llama_bin)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for source in args.sources:
            src = Path(source)
            is_dir = src.is_dir()
            reference = checkpoint_reference(src) if is_dir else None
            src_reader = None if is_dir else GGUFReader(src)
            golden = None
            if is_dir and (src.parent / f"{src.name}.json").is_file():
                golden = json.loads((src.parent / f"{src.name}.json").read_text())
            for ty in args.types.split(","):
                out = Path(tmp) / f"{src.name}-{ty}.gguf"
                q = subprocess.run([args.hearth, "quantize", str(src), str(out), "--type", ty],
                                   capture_output=True, text=True)
                if q.returncode != 0:
                    print(f"{src.name} {ty}: FAILED: hearth quantize: {q.stderr.strip()}")
                    failures += 1
                    continue
                problems = check_file(out, ty, reference, src_reader)
                prompt = PROMPTS.get(src.name, "The capital of France is")
                ok, text = llama_generate(bin_dir, out, prompt)
                if not ok or not text.strip():
                    problems.append(f"llama-completion failed: {text!r}")
                agree = ""
                if ok and golden is not None and ty == "f32":
                    from transformers import AutoTokenizer
                    tok = AutoTokenizer.from_pretrained(src)
                    case = next(c for c in golden["cases"] if c["prompt_text"] == prompt)
                    want = token_bytes(tok, case["greedy_ids"])
                    same = text.startswith(want)
                    agree = f"; greedy text {'equals' if same else 'DIFFERS from'} transformers'"
                    if not same:
                        problems.append(f"llama.cpp {text!r} vs transformers {want!r}")
                status = "ok" if not problems else "FAILED"
                failures += bool(problems)
                size = out.stat().st_size / 1e6
                print(f"{src.name} {ty}: {status} ({size:.1f} MB; gguf-py read {len(GGUFReader(out).tensors)} "
                      f"tensors; llama.cpp generated {text[:40]!r}{agree})")
                for p in problems[:8]:
                    print("    ", p)
                out.unlink()
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
