//! The case table itself: small awkward shapes for the tests, real model shapes (SmolLM2-135M,
//! Llama 3 8B) for the benchmark.

use super::{KernelCase, Op};
use crate::backend::{KvType, RopeLayout};
use crate::quant::QuantType;

/// Matmul rows of the test cases: not a multiple of the matvec (4) or matmul (64) row tiles.
const TEST_ROWS: usize = 67;

/// The correctness cases (small shapes, every block format, the awkward sizes).
pub fn test_cases() -> Vec<KernelCase> {
    let mut v = Vec::new();
    for qtype in QuantType::ALL {
        // Float rows of 61 values end in a partial 8-value chunk, and leave F16/BF16 rows
        // 2-byte aligned.
        let n_cols = match qtype.block_elems() {
            1 => 61,
            32 => 160,
            _ => 512,
        };
        // 1 and 3 tokens take the matvec kernel, 70 the tiled matmul (two token tiles).
        for n_tokens in [1, 3, 70] {
            v.push(KernelCase::new(
                format!("matmul {qtype} {n_tokens}x{n_cols} · {TEST_ROWS}x{n_cols}"),
                Op::Matmul {
                    qtype,
                    n_tokens,
                    n_rows: TEST_ROWS,
                    n_cols,
                },
            ));
        }
        v.push(KernelCase::new(
            format!("embed {qtype} 5 ids of 37x{n_cols}"),
            Op::Embed {
                qtype,
                n_vocab: 37,
                n_cols,
                n_ids: 5,
            },
        ));
    }
    // Long rows: many 8-value chunks per thread; 9 tokens is the first past matvec.
    for (qtype, n_tokens, n_rows, n_cols) in [
        (QuantType::Q4_K, 1, 5, 4608),
        (QuantType::F32, 1, 3, 2501),
        (QuantType::Q8_0, 9, 130, 2080),
        (QuantType::Q6_K, 2, 9, 2304),
    ] {
        v.push(KernelCase::new(
            format!("matmul {qtype} {n_tokens}x{n_cols} · {n_rows}x{n_cols}"),
            Op::Matmul {
                qtype,
                n_tokens,
                n_rows,
                n_cols,
            },
        ));
    }
    for (n_rows, n_cols, group) in [(3, 576, 576), (5, 256, 64), (2, 1000, 1000), (1, 7, 7)] {
        v.push(KernelCase::new(
            format!("rms_norm {n_rows}x{n_cols} groups of {group}"),
            Op::RmsNorm {
                n_rows,
                n_cols,
                group,
            },
        ));
    }
    for (n_rows, n_heads, head_dim, n_rot, layout, pos_start) in [
        (3, 4, 64, 64, RopeLayout::Interleaved, 0),
        (2, 3, 80, 32, RopeLayout::Neox, 30_000),
        (5, 2, 128, 128, RopeLayout::Neox, 7),
        (1, 9, 64, 48, RopeLayout::Interleaved, 8191),
    ] {
        v.push(KernelCase::new(
            format!(
                "rope {layout:?} {n_rows} rows of {n_heads}x{head_dim} rot {n_rot} at {pos_start}"
            ),
            Op::Rope {
                n_rows,
                n_heads,
                head_dim,
                n_rot,
                layout,
                pos_start,
            },
        ));
    }
    // (n_q, heads, kv heads, head_dim, pos_start, window, softcap). Up to 8 rows take the
    // split kernel (256 keys per split), more the tiled one (BK = 2048 / max(head_dim, 64)).
    for (n_q, n_heads, n_kv_heads, head_dim, pos_start, window, softcap) in [
        (1, 9, 3, 64, 0, None, None),
        (1, 9, 3, 64, 299, None, None),
        (1, 5, 1, 80, 1000, Some(100), None),
        (1, 4, 4, 256, 600, Some(5000), None),
        (1, 8, 2, 64, 511, None, Some(0.5)),
        (3, 6, 2, 32, 257, Some(3), None),
        (8, 4, 1, 128, 40, None, None),
        (70, 9, 3, 64, 0, None, None),
        (33, 5, 1, 80, 40, Some(30), None),
        (20, 4, 2, 256, 100, None, Some(0.5)),
        (100, 6, 3, 32, 0, Some(50), None),
        (9, 3, 3, 128, 300, Some(1000), None),
    ] {
        let mut name = format!(
            "attention {n_q} rows {n_heads}/{n_kv_heads} heads of {head_dim} at {pos_start}"
        );
        if let Some(w) = window {
            name += &format!(" window {w}");
        }
        if let Some(c) = softcap {
            name += &format!(" softcap {c}");
        }
        for kv in [KvType::F32, KvType::F16] {
            v.push(KernelCase::new(
                format!("{name} {kv} cache"),
                Op::Attention {
                    kv,
                    n_q,
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    pos_start,
                    window,
                    softcap,
                },
            ));
        }
    }
    v.push(KernelCase::new(
        "copy_rows 9 of 10x100",
        Op::CopyRows {
            n_rows: 10,
            n_cols: 100,
        },
    ));
    for kv in [KvType::F32, KvType::F16] {
        for (n_rows, n_cols) in [(1, 192), (70, 384), (3, 2)] {
            v.push(KernelCase::new(
                format!("cache_write {kv} {n_rows}x{n_cols}"),
                Op::CacheWrite { kv, n_rows, n_cols },
            ));
        }
    }
    for n in [1000, 70_001] {
        v.push(KernelCase::new(format!("silu_mul {n}"), Op::SiluMul { n }));
        v.push(KernelCase::new(format!("gelu_mul {n}"), Op::GeluMul { n }));
        v.push(KernelCase::new(
            format!("add_assign {n}"),
            Op::AddAssign { n },
        ));
        v.push(KernelCase::new(format!("scale {n}"), Op::Scale { n }));
    }
    for (n_rows, n_cols) in [(3, 49_152), (2, 100), (1, 1)] {
        v.push(KernelCase::new(
            format!("argmax {n_rows}x{n_cols}"),
            Op::Argmax { n_rows, n_cols },
        ));
    }
    v
}

/// The benchmark cases: the layers of SmolLM2-135M (576 wide, FFN 1536, 9/3 heads of 64, a
/// 49152-token Q8_0 head, Q4_1 elsewhere) and of Llama 3 8B (4096 wide, FFN 14336, 32/8 heads
/// of 128) in every block format, attention at 512, 4096 and 32768 positions. `quick` keeps a
/// subset that runs in a minute or two on a CPU-emulated GPU (lavapipe).
pub fn bench_cases(quick: bool) -> Vec<KernelCase> {
    let mut v = Vec::new();
    let matmul = |v: &mut Vec<KernelCase>, what: &str, qtype, n_tokens, n_rows, n_cols| {
        v.push(KernelCase::new(
            format!("{what} {qtype} {n_tokens}x{n_cols} · {n_rows}x{n_cols}"),
            Op::Matmul {
                qtype,
                n_tokens,
                n_rows,
                n_cols,
            },
        ))
    };
    let attention = |v: &mut Vec<KernelCase>,
                     what: &str,
                     kv: KvType,
                     n_q,
                     n_heads,
                     n_kv_heads,
                     head_dim,
                     n_ctx| {
        v.push(KernelCase::new(
            format!("{what} attention {n_q} rows {n_heads}/{n_kv_heads} heads of {head_dim}, ctx {n_ctx}, {kv} cache"),
            Op::Attention {
                kv,
                n_q,
                n_heads,
                n_kv_heads,
                head_dim,
                pos_start: n_ctx - n_q,
                window: None,
                softcap: None,
            },
        ))
    };

    // SmolLM2-135M, one decode step's kernels.
    let q = QuantType::Q4_1;
    matmul(&mut v, "smollm2 attn_q", q, 1, 576, 576);
    matmul(&mut v, "smollm2 attn_k", q, 1, 192, 576);
    matmul(&mut v, "smollm2 ffn_up", q, 1, 1536, 576);
    matmul(&mut v, "smollm2 ffn_down", q, 1, 576, 1536);
    matmul(&mut v, "smollm2 output", QuantType::Q8_0, 1, 49_152, 576);
    attention(&mut v, "smollm2", KvType::F16, 1, 9, 3, 64, 512);
    v.push(KernelCase::new(
        "smollm2 cache_write f16 1x192",
        Op::CacheWrite {
            kv: KvType::F16,
            n_rows: 1,
            n_cols: 192,
        },
    ));
    v.push(KernelCase::new(
        "smollm2 rms_norm 1x576",
        Op::RmsNorm {
            n_rows: 1,
            n_cols: 576,
            group: 576,
        },
    ));
    v.push(KernelCase::new(
        "smollm2 rope 9 heads of 64",
        Op::Rope {
            n_rows: 1,
            n_heads: 9,
            head_dim: 64,
            n_rot: 64,
            layout: RopeLayout::Interleaved,
            pos_start: 511,
        },
    ));
    v.push(KernelCase::new(
        "smollm2 silu_mul 1536",
        Op::SiluMul { n: 1536 },
    ));
    v.push(KernelCase::new(
        "smollm2 add_assign 576",
        Op::AddAssign { n: 576 },
    ));
    v.push(KernelCase::new(
        "smollm2 embed Q8_0 1 id",
        Op::Embed {
            qtype: QuantType::Q8_0,
            n_vocab: 49_152,
            n_cols: 576,
            n_ids: 1,
        },
    ));
    v.push(KernelCase::new(
        "smollm2 argmax 49152",
        Op::Argmax {
            n_rows: 1,
            n_cols: 49_152,
        },
    ));
    // SmolLM2 prompt processing.
    let n_prompt = if quick { 64 } else { 512 };
    matmul(&mut v, "smollm2 prefill ffn_up", q, n_prompt, 1536, 576);
    attention(
        &mut v,
        "smollm2 prefill",
        KvType::F16,
        n_prompt,
        9,
        3,
        64,
        n_prompt,
    );

    // Llama 3 8B.
    let formats: &[QuantType] = if quick {
        &[QuantType::Q4_0, QuantType::Q8_0, QuantType::Q4_K]
    } else {
        &QuantType::ALL
    };
    let shapes: &[(&str, usize, usize)] = if quick {
        &[("attn_q", 4096, 4096)]
    } else {
        &[
            ("attn_q", 4096, 4096),
            ("ffn_up", 14_336, 4096),
            ("ffn_down", 4096, 14_336),
        ]
    };
    for &qtype in formats {
        for &(what, n_rows, n_cols) in shapes {
            matmul(&mut v, &format!("llama8b {what}"), qtype, 1, n_rows, n_cols);
        }
    }
    let contexts: &[usize] = if quick {
        &[512, 4096]
    } else {
        &[512, 4096, 32_768]
    };
    for &n_ctx in contexts {
        for kv in [KvType::F16, KvType::F32] {
            attention(&mut v, "llama8b", kv, 1, 32, 8, 128, n_ctx);
        }
    }
    if !quick {
        matmul(
            &mut v,
            "llama8b prefill attn_q",
            QuantType::Q4_0,
            512,
            4096,
            4096,
        );
        attention(&mut v, "llama8b prefill", KvType::F16, 512, 32, 8, 128, 512);
    }
    v
}
