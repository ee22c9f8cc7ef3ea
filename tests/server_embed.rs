//! Embeddings: `Runtime::embed` pools the final hidden states as a host reference does (mean,
//! cls, last; across prompt chunks), and `hearth serve`'s `/api/embed`, `/api/embeddings` and
//! `/v1/embeddings` give unit vectors that do not depend on the batch, base64 that decodes to
//! the same floats, and `truncate` as asked (a 400 naming both lengths when it is off).

use std::sync::Arc;

use base64::Engine as _;
use serde_json::{json, Value};

use hearth::backend::cpu::CpuBackend;
use hearth::backend::KvType;
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::runtime::{Pooling, Runtime};
use hearth::tokenizer::Tokenizer;

use crate::http::{nano_gguf, post, post_ok, serve_model};

fn vectors(v: &Value) -> Vec<Vec<f64>> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e.as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect()
        })
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// The host reference: every token's hidden state from one forward pass, pooled in f64 and
/// normalised.
fn reference(hidden: &[f32], d: usize, pooling: Pooling) -> Vec<f64> {
    let rows: Vec<&[f32]> = hidden.chunks_exact(d).collect();
    let picked: Vec<&[f32]> = match pooling {
        Pooling::Mean => rows.clone(),
        Pooling::Cls => vec![rows[0]],
        Pooling::Last => vec![rows[rows.len() - 1]],
    };
    let mut v = vec![0f64; d];
    for r in &picked {
        v.iter_mut()
            .zip(r.iter())
            .for_each(|(s, &x)| *s += x as f64);
    }
    let n = norm(&v);
    v.iter().map(|x| x / n).collect()
}

#[test]
fn runtime_embeddings_pool_the_hidden_states_across_chunks_and_batches() {
    let f = GgufFile::open(nano_gguf()).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let backend = CpuBackend::new();
    let model = Model::load(&backend, &f, spec).unwrap();
    let d = model.config.n_embd;
    let mut rt = Runtime::new(Arc::new(backend), Arc::new(model), 512, KvType::F16).unwrap();
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "hi",
        "Once upon a time, there was a tiny model.",
    ];
    let inputs: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| tok.encode(t, tok.add_bos()).unwrap())
        .collect();
    for pooling in [Pooling::Mean, Pooling::Cls, Pooling::Last] {
        // Prompt chunks of 5 tokens: the long inputs take several passes.
        rt.set_prefill_chunk(5);
        let batched = rt.embed(&inputs, pooling).unwrap();
        rt.set_prefill_chunk(512);
        for (input, got) in inputs.iter().zip(&batched) {
            let hidden = rt.hidden_states(input).unwrap();
            assert_eq!(hidden.len(), input.len() * d);
            let want = reference(&hidden, d, pooling);
            let err = got
                .iter()
                .zip(&want)
                .map(|(&g, w)| (g as f64 - w).abs())
                .fold(0.0, f64::max);
            // f32 hidden states either way; the sums differ only in f64 rounding and the
            // prompt rows' kernels sum every output in the same order, chunked or not.
            assert!(err < 1e-5, "{pooling:?}: max error {err}");
            let alone = rt.embed(std::slice::from_ref(input), pooling).unwrap();
            assert_eq!(alone[0], *got, "{pooling:?}: batching changed the vector");
        }
    }
    assert_eq!(rt.blocks_in_use(), 0, "the cache was only borrowed");
    assert!(rt.embed(&[vec![]], Pooling::Mean).is_err());
}

#[test]
fn embedding_endpoints_agree_and_honour_truncate() {
    let server = serve_model(&nano_gguf(), "nano");
    let addr = server.addr();
    let texts = [
        "Why is the sky blue?",
        "hello",
        "A much longer sentence about nothing at all.",
    ];

    // One at a time and all together: the same vectors, of unit length.
    let all = post_ok(
        addr,
        "/api/embed",
        &json!({"model": "nano", "input": texts}),
    );
    let all_vectors = vectors(&all["embeddings"]);
    assert_eq!(all_vectors.len(), 3);
    for key in ["total_duration", "load_duration", "prompt_eval_count"] {
        assert!(all[key].is_u64(), "{key}: {all}");
    }
    for (text, v) in texts.iter().zip(&all_vectors) {
        assert!((norm(v) - 1.0).abs() < 1e-5);
        let one = post_ok(addr, "/api/embed", &json!({"model": "nano", "input": text}));
        assert_eq!(vectors(&one["embeddings"])[0], *v, "{text}");
        let legacy = post_ok(
            addr,
            "/api/embeddings",
            &json!({"model": "nano", "prompt": text}),
        );
        let legacy: Vec<f64> = legacy["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(legacy, *v);
    }
    let empty = post_ok(
        addr,
        "/api/embeddings",
        &json!({"model": "nano", "prompt": ""}),
    );
    assert_eq!(empty["embedding"], json!([]));

    // OpenAI: floats, base64 of the same little-endian f32, usage.
    let floats = post_ok(
        addr,
        "/v1/embeddings",
        &json!({"model": "nano", "input": texts}),
    );
    assert_eq!(floats["object"], "list");
    let total = all["prompt_eval_count"].as_u64().unwrap();
    assert_eq!(floats["usage"]["prompt_tokens"].as_u64().unwrap(), total);
    let b64 = post_ok(
        addr,
        "/v1/embeddings",
        &json!({"model": "nano", "input": texts, "encoding_format": "base64"}),
    );
    for i in 0..3 {
        let f: Vec<f64> = floats["data"][i]["embedding"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(f, all_vectors[i]);
        // JSON carries each f32 in its shortest decimal form: compare as f32.
        let f: Vec<f32> = f.iter().map(|&x| x as f32).collect();
        assert_eq!(floats["data"][i]["index"], i);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64["data"][i]["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(decoded, f);
    }

    // Too long for num_ctx 8: cut to the first 8 tokens, or refused with both lengths.
    let long = "one two three four five six seven eight nine ten eleven twelve";
    let cut = post_ok(
        addr,
        "/api/embed",
        &json!({"model": "nano", "input": long, "options": {"num_ctx": 8}}),
    );
    assert_eq!(cut["prompt_eval_count"], 8);
    let f = GgufFile::open(nano_gguf()).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let ids = tok.encode(long, tok.add_bos()).unwrap();
    assert!(ids.len() > 8);
    let first8 = post_ok(
        addr,
        "/v1/embeddings",
        &json!({"model": "nano", "input": [ids[..8].to_vec()]}),
    );
    assert_eq!(first8["data"][0]["embedding"], cut["embeddings"][0]);
    let (status, v) = post(
        addr,
        "/api/embed",
        &json!({"model": "nano", "input": long, "truncate": false, "options": {"num_ctx": 8}}),
    );
    assert_eq!(status, 400, "{v}");
    let msg = v["error"].as_str().unwrap();
    assert!(
        msg.contains(&ids.len().to_string()) && msg.contains('8'),
        "{msg}"
    );

    // Bad input.
    for (path, body) in [
        ("/api/embed", json!({"model": "nano", "input": 5})),
        ("/api/embed", json!({"model": "nano", "input": [""]})),
        (
            "/v1/embeddings",
            json!({"model": "nano", "input": "x", "encoding_format": "hex"}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "nano", "input": [[99999999]]}),
        ),
    ] {
        assert_eq!(post(addr, path, &body).0, 400, "{body}");
    }
    assert_eq!(
        post(addr, "/api/embed", &json!({"model": "nope", "input": "x"})).0,
        404
    );
}
