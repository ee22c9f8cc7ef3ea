"""Makes tests/data/quant/llama-quantize.json: what llama.cpp's `llama-quantize` writes for the
nano model, per target type, as the sha256 of every tensor's bytes (and its type), so the Rust
tests can check that `hearth quantize` writes bit-identical files without the peer installed.

Input: tests/data/nano/nano-llama.gguf converted to F32 by `hearth quantize ... --type f32`
(checked here: every F32 tensor equals the `gguf` package's dequantization of the original
bit for bit, so the input does not depend on Hearth's correctness). llama-quantize: the peer
built by ../shared/tools/build-llama-cpp-peer.sh (llama.cpp 0c1e57098), `QUANTIZE` env var
or --llama-quantize. Run from the repository root after `cargo build --release`:

    .venv-tools/bin/python tools/make_llama_quantize_goldens.py --llama-quantize peer/build/bin/llama-quantize
"""

import argparse
import hashlib
import json
import os
import subprocess
import tempfile

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TYPES = ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1",
         "Q4_K_S", "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-quantize", default=os.environ.get("QUANTIZE"))
    ap.add_argument("--hearth", default="target/release/hearth")
    args = ap.parse_args()
    src = "tests/data/nano/nano-llama.gguf"
    out = {"source": src, "input": "hearth quantize SOURCE --type f32",
           "made_by": "llama-quantize (llama.cpp 0c1e57098) INPUT OUT TYPE 2", "types": {}}
    with tempfile.TemporaryDirectory() as d:
        f32 = os.path.join(d, "f32.gguf")
        subprocess.run([args.hearth, "quantize", src, f32, "--type", "f32"], check=True,
                       capture_output=True)
        orig = {t.name: t for t in GGUFReader(src).tensors}
        for t in GGUFReader(f32).tensors:
            want = dequantize(orig[t.name].data, orig[t.name].tensor_type).astype(np.float32)
            got = np.asarray(t.data).view(np.float32).reshape(want.shape)
            assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), t.name
        for ty in TYPES:
            q = os.path.join(d, f"{ty}.gguf")
            subprocess.run([args.llama_quantize, f32, q, ty, "2"], check=True,
                           capture_output=True)
            r = GGUFReader(q)
            ftype = int(r.fields["general.file_type"].contents())
            out["types"][ty.lower()] = {
                "file_type": ftype,
                "tensors": {t.name: [t.tensor_type.name,
                                     hashlib.sha256(np.asarray(t.data).tobytes()).hexdigest()]
                            for t in r.tensors},
            }
    with open("tests/data/quant/llama-quantize.json", "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
