//! Block formats against the `gguf` Python package, bit-exact: random blocks
//! (tests/data/quant/<TYPE>.json, tools/make_quant_goldens.py) and every tensor of both real
//! models (tests/data/quant/real-tensors.json, tools/make_real_tensor_hashes.py).

use hearth::gguf::GgufFile;
use hearth::quant::QuantType;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::common::{data, real_model};

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn golden(t: QuantType) -> Value {
    serde_json::from_str(
        &std::fs::read_to_string(data(&format!("quant/{}.json", t.name()))).unwrap(),
    )
    .unwrap()
}

#[test]
fn dequantize_is_bit_exact_against_gguf_py() {
    for t in QuantType::ALL.into_iter().filter(|t| *t != QuantType::F32) {
        let g = golden(t);
        // The float types are grouped 32 to a "block" in the goldens; the ratio must agree.
        let (g_elems, g_bytes) = (
            g["values_per_block"].as_u64().unwrap() as usize,
            g["bytes_per_block"].as_u64().unwrap() as usize,
        );
        assert_eq!(g_bytes * t.block_elems(), g_elems * t.block_bytes(), "{t}");
        let blocks = g["dequantize"]["blocks_hex"].as_array().unwrap();
        let outputs = g["dequantize"]["output_bits"].as_array().unwrap();
        assert!(!blocks.is_empty());
        for (i, (b, want)) in blocks.iter().zip(outputs).enumerate() {
            let bytes = hex(b.as_str().unwrap());
            let want: Vec<u32> = want
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as u32)
                .collect();
            let mut got = vec![0f32; want.len()];
            t.dequantize_row(&bytes, &mut got);
            let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got, want, "{t} block {i}");
        }
    }
}

#[test]
fn quantize_is_bit_exact_against_gguf_py_where_hearth_quantizes() {
    let mut n_checked = 0;
    for t in QuantType::ALL.into_iter().filter(|t| *t != QuantType::F32) {
        let g = golden(t);
        let Some(q) = g.get("quantize") else { continue };
        let inputs: Vec<f32> = q["input_bits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| match row.as_array() {
                Some(r) => r
                    .iter()
                    .map(|v| f32::from_bits(v.as_u64().unwrap() as u32))
                    .collect::<Vec<_>>(),
                None => vec![f32::from_bits(row.as_u64().unwrap() as u32)],
            })
            .collect();
        let want: Vec<u8> = q["blocks_hex"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| hex(b.as_str().unwrap()))
            .collect();
        let mut got = vec![0u8; t.row_bytes(inputs.len()).unwrap()];
        if t.quantize_row(&inputs, &mut got).is_some() {
            assert_eq!(got, want, "{t}");
            n_checked += 1;
        }
    }
    assert!(
        n_checked >= 7,
        "F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 are checked"
    );
}

fn check_real_model(file_name: &str, path: &std::path::Path) {
    let golden: Value =
        serde_json::from_str(&std::fs::read_to_string(data("quant/real-tensors.json")).unwrap())
            .unwrap();
    let tensors = golden["models"][file_name]["tensors"].as_object().unwrap();
    let f = GgufFile::open(path).unwrap();
    assert_eq!(f.tensors().len(), tensors.len());
    for t in f.tensors() {
        let mut out = vec![0f32; t.n_elements() as usize];
        t.qtype.dequantize_row(&f.tensor_bytes(t), &mut out);
        let mut h = Sha256::new();
        for v in &out {
            h.update(v.to_le_bytes());
        }
        let got: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            got,
            tensors[&t.name]["sha256_f32"].as_str().unwrap(),
            "{} ({})",
            t.name,
            t.qtype
        );
    }
}

#[test]
fn every_smollm2_tensor_dequantizes_like_gguf_py() {
    if let Some(p) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") {
        check_real_model("SmolLM2-135M-Instruct.Q4_1.gguf", &p);
    }
}

#[test]
fn every_gemma3_tensor_dequantizes_like_gguf_py() {
    if let Some(p) = real_model("HEARTH_TEST_GEMMA3", "gemma3:270m") {
        check_real_model("gemma-3-270m-q4_k_m.gguf", &p);
    }
}
