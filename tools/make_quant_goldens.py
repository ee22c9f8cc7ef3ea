#!/usr/bin/env python3
"""Bit-exact dequantize / quantize goldens for GGUF block types, from the `gguf` package.

Makes tests/data/quant/<TYPE>.json for F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, Q6_K:

    {"type", "values_per_block", "bytes_per_block", "source",
     "dequantize": {"blocks_hex": [8 strings], "output_bits": [8 lists of u32]},
     "quantize":   {"input_bits": [8 lists of u32], "blocks_hex": [8 strings]}   # simple types only
    }

dequantize: 8 blocks of random raw bytes (numpy default_rng, fixed seed per type) whose f16 scale
fields (d; m / dmin where the type has one) are overwritten with finite f16 values: random sign,
magnitude log-uniform in [1e-3, 1e-1] for blocks 0-5, block 6 has d = 0 (dmin / m kept), block 7 a
subnormal d (|d| ~ 2^-20). The expected output is gguf.quants.dequantize(blocks, type) as f32 bit
patterns (u32), so a scalar Rust dequantizer that evaluates the same expression in the same order
without FMA matches bit for bit:
    Q8_0  d * q                     Q4_0  d * (q - 8)          Q5_0  d * (q - 16)
    Q4_1  d * q + m                 Q5_1  d * q + m
    Q4_K, Q5_K  (d * sc) * q - (dmin * m)       Q6_K  (d * sc) * (q - 32)
(all in f32, f16 fields widened exactly). For F16 and BF16 a "block" is 32 values (64 bytes):
random finite bit patterns plus +-0, +-inf, subnormals and the largest finite values; no NaN.

quantize (types gguf-py can quantize: F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1): 8 blocks of f32
inputs (stored as u32 bit patterns) -- Gaussian, tiny, all-zero, constant, an outlier, exact
rounding ties, wide range -- and gguf.quants.quantize(input, type) as hex. For F16 the inputs also
hold values that overflow to inf, underflow to subnormals/zero, and halfway ties; for BF16 a NaN
(gguf-py, like ggml, makes it a quiet NaN).

Usage (from the repository root, in the tools venv):

    .venv-tools/bin/python tools/make_quant_goldens.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import gguf
from gguf import GGMLQuantizationType as QT
from gguf.quants import dequantize, quantize

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "tests" / "data" / "quant"
N_BLOCKS = 8
PLAIN_BLOCK = 32  # values per "block" for F16 / BF16

TYPES = [QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1, QT.Q4_K, QT.Q5_K, QT.Q6_K]
QUANTIZABLE = {QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0, QT.Q4_1, QT.Q5_0, QT.Q5_1}

# Byte offsets of f16 scale fields within a block: (d offset, [second-scale offsets]).
SCALE_FIELDS = {
    QT.Q8_0: (0, []),
    QT.Q4_0: (0, []),
    QT.Q5_0: (0, []),
    QT.Q4_1: (0, [2]),
    QT.Q5_1: (0, [2]),
    QT.Q4_K: (0, [2]),
    QT.Q5_K: (0, [2]),
    QT.Q6_K: (208, []),
}


def sizes(qt: QT) -> tuple[int, int]:
    if qt in (QT.F16, QT.BF16):
        return PLAIN_BLOCK, PLAIN_BLOCK * 2
    return gguf.GGML_QUANT_SIZES[qt]


def f16_field(v: float) -> bytes:
    h = np.array([v], dtype=np.float16)
    assert np.isfinite(h).all()
    return h.tobytes()


def random_scale(rng: np.random.Generator) -> float:
    mag = 10 ** rng.uniform(-3, -1)
    return float(mag if rng.random() < 0.5 else -mag)


def dequant_blocks(qt: QT, rng: np.random.Generator) -> np.ndarray:
    n_vals, type_size = sizes(qt)
    if qt == QT.F16:
        bits = rng.integers(0, 1 << 16, size=(N_BLOCKS, n_vals), dtype=np.uint32).astype(np.uint16)
        bits[(bits & 0x7C00) == 0x7C00] &= 0xFBFF  # no inf/NaN from the random part: clear one exponent bit
        specials = [0x0000, 0x8000, 0x7C00, 0xFC00, 0x0001, 0x8001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0xBC00]
        bits[N_BLOCKS - 1, :len(specials)] = specials
        return bits.view(np.uint8).reshape(N_BLOCKS, type_size)
    if qt == QT.BF16:
        bits = rng.integers(0, 1 << 16, size=(N_BLOCKS, n_vals), dtype=np.uint32).astype(np.uint16)
        bits[(bits & 0x7F80) == 0x7F80] &= 0xFF7F
        specials = [0x0000, 0x8000, 0x7F80, 0xFF80, 0x0001, 0x8001, 0x007F, 0x0080, 0x7F7F, 0xFF7F, 0x3F80, 0xBF80]
        bits[N_BLOCKS - 1, :len(specials)] = specials
        return bits.view(np.uint8).reshape(N_BLOCKS, type_size)
    raw = rng.integers(0, 256, size=(N_BLOCKS, type_size), dtype=np.uint8)
    d_off, others = SCALE_FIELDS[qt]
    for b in range(N_BLOCKS):
        if b == 6:
            d = 0.0
        elif b == 7:
            d = (2.0 ** -20) * (1 if rng.random() < 0.5 else -1) * rng.uniform(1, 8)
        else:
            d = random_scale(rng)
        raw[b, d_off:d_off + 2] = np.frombuffer(f16_field(d), dtype=np.uint8)
        for off in others:
            raw[b, off:off + 2] = np.frombuffer(f16_field(random_scale(rng)), dtype=np.uint8)
    return raw


def quant_inputs(qt: QT, rng: np.random.Generator) -> np.ndarray:
    n_vals, _ = sizes(qt)
    x = np.zeros((N_BLOCKS, n_vals), dtype=np.float32)
    x[0] = rng.standard_normal(n_vals)
    x[1] = rng.standard_normal(n_vals) * 0.01
    x[2] = 0.0
    x[3] = 0.37
    x[4] = rng.standard_normal(n_vals) * 0.05
    x[4, n_vals // 3] = 7.5
    # rounding ties: for Q8_0 (amax 127 -> d = 1) and Q4_0 / Q5_0 (max -8 / -16 -> d = 1) halves land on ties
    k = np.arange(n_vals, dtype=np.float32)
    ties = (k - n_vals / 2) + 0.5
    if qt == QT.Q8_0:
        ties[0] = 127.0
    elif qt == QT.Q4_0:
        ties = (k % 16) - 8 + 0.5
        ties[0] = -8.0
    elif qt == QT.Q5_0:
        ties = (k % 32) - 16 + 0.5
        ties[0] = -16.0
    x[5] = ties
    x[6] = rng.uniform(-1000, 1000, n_vals)
    x[7] = -np.abs(rng.standard_normal(n_vals)) * 3
    if qt == QT.F16:
        special = np.array([70000.0, -70000.0, 65504.0, 65520.0, 65519.99, 1e-8, -3e-8, 6e-5, 1e-7,
                            1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11, 2048.0 + 1.0, 2048.0 + 3.0, -0.0, 1e-30],
                           dtype=np.float32)
        x[7, :len(special)] = special
    if qt == QT.BF16:
        special = np.array([np.nan, np.inf, -np.inf, 3.4e38, -0.0, 1e-40,
                            np.float32(1.0) + np.float32(2.0 ** -8), np.float32(1.0) + np.float32(3 * 2.0 ** -8)],
                           dtype=np.float32)
        x[7, :len(special)] = special
    return x


def hexes(blocks: np.ndarray) -> list[str]:
    return [bytes(b.tobytes()).hex() for b in blocks]


def make(qt: QT, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_vals, type_size = sizes(qt)
    blocks = dequant_blocks(qt, rng)
    assert blocks.shape == (N_BLOCKS, type_size)
    out = dequantize(blocks.reshape(-1), qt).astype(np.float32).reshape(N_BLOCKS, n_vals)
    if qt not in (QT.F16, QT.BF16):
        assert np.isfinite(out).all(), qt
    assert not np.isnan(out).any()
    doc = {
        "type": qt.name,
        "values_per_block": n_vals,
        "bytes_per_block": type_size,
        "source": f"gguf {gguf_version()} gguf.quants (numpy {np.__version__}); tools/make_quant_goldens.py seed {seed}",
        "dequantize": {"blocks_hex": hexes(blocks), "output_bits": out.view(np.uint32).tolist()},
    }
    if qt in QUANTIZABLE:
        x = quant_inputs(qt, rng)
        q = np.asarray(quantize(x, qt))
        qbytes = q.view(np.uint8).reshape(N_BLOCKS, type_size)
        doc["quantize"] = {"input_bits": x.view(np.uint32).tolist(), "blocks_hex": hexes(qbytes)}
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / f"{qt.name}.json"
    path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)")


def gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


def main() -> None:
    for i, qt in enumerate(TYPES):
        make(qt, 1000 + i)


if __name__ == "__main__":
    main()
