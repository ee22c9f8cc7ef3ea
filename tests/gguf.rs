//! The GGUF reader and writer: round trips, and hostile or truncated files, which must give an
//! error and never a panic, a huge allocation or an out-of-bounds read.

use hearth::gguf::{Array, GgufFile, GgufWriter, Value, ValueType};
use hearth::quant::QuantType;
use proptest::prelude::*;

use crate::common::data;

fn sample_writer() -> GgufWriter {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.set("t.u8", Value::U8(7)).unwrap();
    w.set("t.i8", Value::I8(-7)).unwrap();
    w.set("t.u16", Value::U16(65535)).unwrap();
    w.set("t.i16", Value::I16(-300)).unwrap();
    w.set("t.u32", Value::U32(1 << 31)).unwrap();
    w.set("t.i32", Value::I32(-5)).unwrap();
    w.set("t.f32", Value::F32(0.25)).unwrap();
    w.set("t.bool", Value::Bool(true)).unwrap();
    w.set("t.u64", Value::U64(u64::MAX)).unwrap();
    w.set("t.i64", Value::I64(i64::MIN)).unwrap();
    w.set("t.f64", Value::F64(-1.5e300)).unwrap();
    w.set("t.str", Value::String("héllo ▁ 👋".into())).unwrap();
    w.set(
        "t.nested",
        Value::Array(
            Array::from_values(
                ValueType::Array,
                vec![
                    Value::Array(
                        Array::from_values(ValueType::I32, [Value::I32(1), Value::I32(-2)])
                            .unwrap(),
                    ),
                    Value::Array(Array::from_values(ValueType::I32, []).unwrap()),
                ],
            )
            .unwrap(),
        ),
    )
    .unwrap();
    w.set(
        "t.strs",
        Value::Array(
            Array::from_values(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("".into())],
            )
            .unwrap(),
        ),
    )
    .unwrap();
    let f32s: Vec<u8> = (0..64)
        .flat_map(|i| (i as f32 * 0.5).to_le_bytes())
        .collect();
    w.add_tensor("a.weight", &[32, 2], QuantType::F32, f32s)
        .unwrap();
    w.add_tensor("b.weight", &[32], QuantType::Q8_0, vec![1; 34])
        .unwrap();
    w.add_tensor("c.weight", &[256, 1], QuantType::Q4_K, vec![3; 144])
        .unwrap();
    w
}

#[test]
fn writer_output_reads_back_identically() {
    let w = sample_writer();
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.get("t.u64"), Some(&Value::U64(u64::MAX)));
    assert_eq!(f.get("t.i64"), Some(&Value::I64(i64::MIN)));
    assert_eq!(f.get("t.f64"), Some(&Value::F64(-1.5e300)));
    assert_eq!(f.get_str("t.str").unwrap(), "héllo ▁ 👋");
    assert_eq!(
        f.get("t.nested")
            .unwrap()
            .as_array()
            .unwrap()
            .get(0)
            .unwrap()
            .as_array()
            .unwrap()
            .get(1),
        Some(Value::I32(-2))
    );
    assert_eq!(f.metadata().count(), 15);
    let a = f.tensor("a.weight").unwrap();
    assert_eq!((a.n_rows(), a.n_cols(), a.qtype), (2, 32, QuantType::F32));
    let bytes = f.tensor_bytes(a);
    assert_eq!(&bytes[4..8], &0.5f32.to_le_bytes());
    assert_eq!(
        &*f.tensor_bytes(f.tensor("c.weight").unwrap()),
        &[3u8; 144][..]
    );
    for t in f.tensors() {
        assert_eq!(
            (f.data_offset + t.offset) % f.alignment,
            0,
            "{} is aligned",
            t.name
        );
    }
    // A second write of what was read is byte-identical.
    let mut w2 = GgufWriter::new();
    for (k, v) in f.metadata() {
        w2.set(k, v.clone()).unwrap();
    }
    for t in f.tensors() {
        w2.add_tensor(&t.name, &t.dims, t.qtype, f.tensor_bytes(t).to_vec())
            .unwrap();
    }
    assert_eq!(w2.to_bytes(), w.to_bytes());
}

#[test]
fn custom_alignment_is_honoured() {
    let mut w = sample_writer();
    w.set("general.alignment", Value::U32(64)).unwrap();
    let f = GgufFile::from_bytes(w.to_bytes()).unwrap();
    assert_eq!(f.alignment, 64);
    for t in f.tensors() {
        assert_eq!((f.data_offset + t.offset) % 64, 0);
    }
    assert!(w.set("general.alignment", Value::U32(48)).is_err());
}

#[test]
fn real_file_parses_and_atomic_write_round_trips() {
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    assert_eq!(f.architecture().unwrap(), "llama");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("copy.gguf");
    let mut w = GgufWriter::new();
    for (k, v) in f.metadata() {
        w.set(k, v.clone()).unwrap();
    }
    for t in f.tensors() {
        w.add_tensor(&t.name, &t.dims, t.qtype, f.tensor_bytes(t).to_vec())
            .unwrap();
    }
    w.write(&path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensors().len(), f.tensors().len());
    for t in f.tensors() {
        assert_eq!(
            &*g.tensor_bytes(g.tensor(&t.name).unwrap()),
            &*f.tensor_bytes(t)
        );
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "no temp file is left behind"
    );
}

fn err_of(bytes: Vec<u8>) -> String {
    match GgufFile::from_bytes(bytes) {
        Ok(_) => panic!("a bad file was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_files_are_errors_at_every_cut() {
    let full = sample_writer().to_bytes();
    for cut in 0..full.len() - 1 {
        // The last tensor's padding is not data; a cut there still parses.
        if let Ok(f) = GgufFile::from_bytes(full[..cut].to_vec()) {
            let end = f
                .tensors()
                .iter()
                .map(|t| f.data_offset as usize + t.offset as usize + t.n_bytes)
                .max()
                .unwrap();
            assert!(
                cut >= end,
                "cut at {cut} parsed although data ends at {end}"
            );
        }
    }
    let nano = std::fs::read(data("nano/nano-llama.gguf")).unwrap();
    let f = GgufFile::from_bytes(nano.clone()).unwrap();
    let data_end = f
        .tensors()
        .iter()
        .map(|t| f.data_offset as usize + t.offset as usize + t.n_bytes)
        .max()
        .unwrap();
    for cut in (0..data_end).step_by(997).chain([data_end - 1]) {
        assert!(
            GgufFile::from_bytes(nano[..cut].to_vec()).is_err(),
            "cut at {cut}"
        );
    }
}

/// Offsets inside `sample_writer()`'s bytes: header counts, then the first key.
const N_TENSORS_AT: usize = 8;
const N_KV_AT: usize = 16;

#[test]
fn hostile_headers_are_clear_errors() {
    let good = sample_writer().to_bytes();

    let mut b = good.clone();
    b[0..4].copy_from_slice(b"GGML");
    assert!(err_of(b).contains("not a GGUF file"));

    let mut b = good.clone();
    b[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert!(err_of(b).contains("version 1"));

    let mut b = good.clone();
    b[N_TENSORS_AT..N_TENSORS_AT + 8].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(err_of(b).contains("tensor infos"));

    let mut b = good.clone();
    b[N_KV_AT..N_KV_AT + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(err_of(b).contains("key-value pairs"));

    // The first key's length: claims more bytes than the file has.
    let mut b = good.clone();
    b[24..32].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(err_of(b).contains("past the end"));
}

fn one_tensor_file(type_id: u32, dims: &[u64], offset: u64, data_len: usize) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&(8u64).to_le_bytes());
    b.extend_from_slice(b"t.weight");
    b.extend_from_slice(&(dims.len() as u32).to_le_bytes());
    for d in dims {
        b.extend_from_slice(&d.to_le_bytes());
    }
    b.extend_from_slice(&type_id.to_le_bytes());
    b.extend_from_slice(&offset.to_le_bytes());
    b.resize(b.len().next_multiple_of(32) + data_len, 0);
    b
}

#[test]
fn hostile_tensor_infos_are_clear_errors() {
    assert!(GgufFile::from_bytes(one_tensor_file(0, &[8], 0, 32)).is_ok());
    assert!(err_of(one_tensor_file(99, &[8], 0, 32)).contains("unsupported tensor type 99"));
    assert!(err_of(one_tensor_file(0, &[8], 0, 31)).contains("past the end"));
    assert!(err_of(one_tensor_file(0, &[8], 64, 32)).contains("past the end"));
    assert!(err_of(one_tensor_file(0, &[8], 3, 64)).contains("alignment"));
    assert!(err_of(one_tensor_file(0, &[u64::MAX, 4], 0, 32)).contains("overflow"));
    assert!(err_of(one_tensor_file(0, &[1 << 62], 0, 32)).contains("overflow"));
    assert!(err_of(one_tensor_file(2, &[31], 0, 32)).contains("block size"));
    assert!(err_of(one_tensor_file(0, &[1, 1, 1, 1, 1], 0, 32)).contains("dimensions"));
}

#[test]
fn deeply_nested_arrays_are_refused_without_recursion_blowup() {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    for _ in 0..10_000 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    assert!(err_of(b).contains("nested"));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random byte edits anywhere in a small valid file: parsing returns, and whatever it
    /// accepts is safe to read (every tensor's bytes are inside the file).
    #[test]
    fn mutated_files_never_panic(edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let mut b = sample_writer().to_bytes();
        for (at, v) in edits {
            let i = at.index(b.len());
            b[i] = v;
        }
        if cut.index(8) == 0 {
            let n = cut.index(b.len());
            b.truncate(n);
        }
        if let Ok(f) = GgufFile::from_bytes(b) {
            for t in f.tensors() {
                let bytes = f.tensor_bytes(t);
                prop_assert_eq!(bytes.len(), t.n_bytes);
                let mut out = vec![0f32; t.n_elements() as usize];
                t.qtype.dequantize_row(&bytes, &mut out);
            }
        }
    }
}
