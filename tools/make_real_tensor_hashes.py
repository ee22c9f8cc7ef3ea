"""Makes tests/data/quant/real-tensors.json: for every tensor of the two real models, the sha256
of its dequantized values as little-endian f32 bytes, computed by the `gguf` package's NumPy
dequantizers (the independent reference). Hearth's tests dequantize the same tensors and must
produce the same bytes (bit-exact).

    .venv-tools/bin/python tools/make_real_tensor_hashes.py SMOLLM2.gguf GEMMA3.gguf
"""

import hashlib
import json
import sys
from pathlib import Path

import gguf
import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests/data/quant/real-tensors.json"


def tensor_hashes(path):
    reader = gguf.GGUFReader(path)
    hashes = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype("<f4", copy=False)
        hashes[t.name] = {
            "type": t.tensor_type.name,
            "sha256_f32": hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest(),
        }
    return hashes


def main():
    out = {"source": "gguf-py quants.dequantize (see tools/requirements.txt for the version)", "models": {}}
    for p in sys.argv[1:]:
        data = Path(p).read_bytes()
        out["models"][Path(p).name] = {
            "sha256": hashlib.sha256(data).hexdigest(),
            "tensors": tensor_hashes(p),
        }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
