//! `hearth serve`'s structured output and log-probabilities: answers under `format` /
//! `response_format` always parse and validate against their schema (nano, and SmolLM2
//! greedy and sampled when it is in the store), bad formats are 400s, and `logprobs` come in
//! OpenAI's and Ollama's shapes, streamed and whole alike, equal to the log-softmax of the
//! model's logits computed here.

use serde_json::{json, Value};

use hearth::backend::cpu::CpuBackend;
use hearth::backend::{Backend, KvType};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::runtime::SoloCache;
use hearth::tokenizer::Tokenizer;

use crate::common::real_model;
use crate::http::{nano_gguf, post, post_ok, serve_model, store_of, stream};

/// Checks `v` against the parts of JSON Schema these tests use; `Err` says where it fails.
fn validate(v: &Value, schema: &Value, at: &str) -> Result<(), String> {
    let fail = |why: &str| Err(format!("{at}: {why} ({v})"));
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(v) {
            return fail("not in enum");
        }
    }
    let ty = schema.get("type").and_then(Value::as_str);
    let type_ok = match ty {
        None => true,
        Some("object") => v.is_object(),
        Some("array") => v.is_array(),
        Some("string") => v.is_string(),
        Some("integer") => v.is_i64() || v.is_u64(),
        Some("number") => v.is_number(),
        Some("boolean") => v.is_boolean(),
        Some("null") => v.is_null(),
        Some(other) => return fail(&format!("the validator does not know type {other}")),
    };
    if !type_ok {
        return fail(&format!("not of type {ty:?}"));
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let Some(x) = v.as_f64() {
        if num("minimum").is_some_and(|m| x < m) || num("maximum").is_some_and(|m| x > m) {
            return fail("out of range");
        }
    }
    if let Some(s) = v.as_str() {
        let n = s.chars().count() as f64;
        if num("maxLength").is_some_and(|m| n > m) || num("minLength").is_some_and(|m| n < m) {
            return fail("length out of range");
        }
    }
    if let Some(items) = v.as_array() {
        let n = items.len() as f64;
        if num("maxItems").is_some_and(|m| n > m) || num("minItems").is_some_and(|m| n < m) {
            return fail("item count out of range");
        }
        if let Some(item_schema) = schema.get("items") {
            for (i, item) in items.iter().enumerate() {
                validate(item, item_schema, &format!("{at}[{i}]"))?;
            }
        }
    }
    if let Some(obj) = v.as_object() {
        let props = schema.get("properties").and_then(Value::as_object);
        for key in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if !obj.contains_key(key.as_str().unwrap_or_default()) {
                return fail(&format!("lacks required {key}"));
            }
        }
        for (k, x) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(s) => validate(x, s, &format!("{at}.{k}"))?,
                None if schema.get("additionalProperties") == Some(&json!(false)) => {
                    return fail(&format!("has extra property {k}"))
                }
                None => {}
            }
        }
    }
    Ok(())
}

/// Bounded schemas (every string, number and list has a limit), so an answer always fits
/// the token budget: objects, enums, booleans, arrays, nesting, numbers.
fn schemas() -> Vec<Value> {
    vec![
        json!({"type": "object", "additionalProperties": false, "required": ["name", "age"],
               "properties": {"name": {"type": "string", "maxLength": 20},
                              "age": {"type": "integer", "minimum": 0, "maximum": 150}}}),
        json!({"type": "object", "required": ["color", "ripe"], "additionalProperties": false,
               "properties": {"color": {"enum": ["red", "green", "yellow"]},
                              "ripe": {"type": "boolean"}}}),
        json!({"type": "object", "required": ["tags"], "additionalProperties": false,
               "properties": {"tags": {"type": "array", "maxItems": 3,
                                       "items": {"type": "string", "maxLength": 10}}}}),
        json!({"type": "object", "required": ["city"], "additionalProperties": false,
               "properties": {"city": {"type": "object", "required": ["name", "population"],
                   "additionalProperties": false,
                   "properties": {"name": {"type": "string", "maxLength": 24},
                                  "population": {"type": "integer", "minimum": 0,
                                                 "maximum": 100000000}}},
                   "score": {"type": "number", "minimum": 0, "maximum": 10}}}),
    ]
}

const PROMPTS: [&str; 4] = [
    "Give me a person named Tom, aged 30, as JSON.",
    "Describe a banana as JSON.",
    "List up to three tags for a photo of a beach, as JSON.",
    "Describe Paris and its population as JSON.",
];

/// Whole and streamed answers under each schema, from Ollama's and OpenAI's endpoints:
/// every one ends by itself and parses and validates.
fn check_schemas(addr: std::net::SocketAddr, model: &str, options: Value, num_predict: u32) {
    for (schema, prompt) in schemas().iter().zip(PROMPTS) {
        let mut o = options.clone();
        o["num_predict"] = json!(num_predict);
        let messages = json!([{"role": "user", "content": prompt}]);
        let mut answers = Vec::new();
        let v = post_ok(
            addr,
            "/api/chat",
            &json!({"model": model, "messages": messages, "format": schema, "stream": false,
                    "options": o}),
        );
        answers.push((v["message"]["content"].clone(), v["done_reason"].clone()));
        let lines = stream(
            addr,
            "/api/generate",
            &json!({"model": model, "prompt": prompt, "format": schema, "options": o}),
        );
        let text: String = lines
            .iter()
            .filter_map(|l| l["response"].as_str())
            .collect();
        answers.push((json!(text), lines.last().unwrap()["done_reason"].clone()));
        let mut oa = json!({"model": model, "messages": messages, "max_tokens": num_predict,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "answer", "schema": schema}}});
        for (k, x) in o.as_object().unwrap() {
            if k != "num_predict" {
                oa[k] = x.clone();
            }
        }
        let v = post_ok(addr, "/v1/chat/completions", &oa);
        let choice = &v["choices"][0];
        let finish = match choice["finish_reason"].as_str() {
            Some("length") => json!("length"),
            _ => json!("stop"),
        };
        answers.push((choice["message"]["content"].clone(), finish));
        for (text, done) in answers {
            assert_eq!(done, "stop", "ended by the budget: {text}");
            let text = text.as_str().unwrap();
            let parsed: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("does not parse ({e}): {text:?}"));
            validate(&parsed, schema, "$").unwrap_or_else(|e| panic!("{e}\nschema {schema}"));
        }
    }
}

#[test]
fn structured_output_parses_and_validates_on_nano() {
    let server = serve_model(&nano_gguf(), "nano");
    let addr = server.addr();
    check_schemas(addr, "nano", json!({"temperature": 0}), 300);
    check_schemas(addr, "nano", json!({"temperature": 1.0, "seed": 11}), 300);

    // Bad formats are the client's mistake.
    let bad = [
        json!({"model": "nano", "prompt": "hi", "format": "yaml"}),
        json!({"model": "nano", "prompt": "hi", "format": 5}),
        json!({"model": "nano", "prompt": "hi", "format": {"type": "no-such-type"}}),
    ];
    for body in bad {
        let (status, v) = post(addr, "/api/generate", &body);
        assert_eq!(status, 400, "{body}: {v}");
        assert!(v["error"].as_str().unwrap().contains("format"), "{v}");
    }
    let (status, v) = post(
        addr,
        "/v1/chat/completions",
        &json!({"model": "nano", "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "xml"}}),
    );
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

#[test]
fn structured_output_on_smollm2_parses_and_validates() {
    let Some(path) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") else {
        return;
    };
    let server = serve_model(&path, "smollm2");
    let addr = server.addr();
    check_schemas(addr, "smollm2", json!({"temperature": 0}), 120);
    check_schemas(addr, "smollm2", json!({"temperature": 0.8, "seed": 5}), 120);
    // Any JSON object: Ollama's "json" and OpenAI's json_object. A free-form object can run
    // past the token budget (the grammar cannot make a small model stop), so every answer that
    // ends by itself must parse, over several seeds, and at least one must end so.
    let prompt = "Give me a person named Tom, aged 30, as JSON.";
    let mut ended = 0;
    for seed in 1..=6 {
        let v = post_ok(
            addr,
            "/api/generate",
            &json!({"model": "smollm2", "prompt": prompt, "format": "json", "stream": false,
                    "options": {"temperature": 0.8, "seed": seed, "num_predict": 160}}),
        );
        if v["done_reason"] == "stop" {
            let parsed: Value = serde_json::from_str(v["response"].as_str().unwrap()).unwrap();
            assert!(parsed.is_object(), "{v}");
            ended += 1;
        }
        let v = post_ok(
            addr,
            "/v1/chat/completions",
            &json!({"model": "smollm2", "messages": [{"role": "user", "content": prompt}],
                    "response_format": {"type": "json_object"}, "temperature": 0.8,
                    "seed": seed, "max_tokens": 160}),
        );
        if v["choices"][0]["finish_reason"] == "stop" {
            let text = v["choices"][0]["message"]["content"].as_str().unwrap();
            let parsed: Value = serde_json::from_str(text).unwrap();
            assert!(parsed.is_object(), "{v}");
            ended += 1;
        }
    }
    assert!(
        ended > 0,
        "no free-form JSON answer ended within 160 tokens in 12 tries"
    );
}

/// Log-softmax of the logits after `prompt` (raw text, BOS as the model wants): the
/// reference for the first answer token's log-probabilities.
fn reference_logprobs(prompt: &str) -> Vec<f64> {
    let f = GgufFile::open(nano_gguf()).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let ids = tok.encode(prompt, tok.add_bos()).unwrap();
    let backend = CpuBackend::new();
    let model = Model::load(&backend, &f, Arch::from_gguf(&f).unwrap().spec(&f).unwrap()).unwrap();
    let mut cache = SoloCache::new(&backend, &model, 64, KvType::F16).unwrap();
    let logits = cache.forward(&model, &backend, &ids, 1).unwrap();
    let logits = backend.read(&logits).unwrap();
    let max = logits.iter().copied().fold(f32::MIN, f32::max) as f64;
    let lse = max
        + logits
            .iter()
            .map(|&l| (l as f64 - max).exp())
            .sum::<f64>()
            .ln();
    logits.iter().map(|&l| l as f64 - lse).collect()
}

/// Checks one chat-shaped entry list: greedy picks the likeliest, alternatives come most
/// likely first, all are log-probabilities; returns the tokens' bytes joined.
fn check_entries(entries: &[Value], top: usize) -> Vec<u8> {
    let mut bytes = Vec::new();
    for e in entries {
        let alts = e["top_logprobs"].as_array().unwrap();
        assert_eq!(alts.len(), top, "{e}");
        let lp = e["logprob"].as_f64().unwrap();
        assert!(lp <= 0.0, "{e}");
        assert_eq!(
            alts[0]["token"], e["token"],
            "greedy takes the likeliest: {e}"
        );
        assert_eq!(alts[0]["logprob"], e["logprob"]);
        assert!(alts
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
        let p: f64 = alts
            .iter()
            .map(|a| a["logprob"].as_f64().unwrap().exp())
            .sum();
        assert!(p <= 1.0 + 1e-5, "{e}");
        bytes.extend(
            e["bytes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|b| b.as_u64().unwrap() as u8),
        );
    }
    bytes
}

#[test]
fn logprobs_in_openai_and_ollama_shapes_match_the_model() {
    let server = serve_model(&nano_gguf(), "nano");
    let addr = server.addr();
    let prompt = "Once upon a time";
    let reference = reference_logprobs(prompt);

    // Ollama, raw prompt: the first token against the reference, streamed equals whole.
    let body = json!({"model": "nano", "prompt": prompt, "raw": true, "stream": false,
                      "logprobs": true, "top_logprobs": 3,
                      "options": {"temperature": 0, "num_predict": 8}});
    let whole = post_ok(addr, "/api/generate", &body);
    let entries = whole["logprobs"].as_array().unwrap();
    assert_eq!(entries.len() as u64, whole["eval_count"].as_u64().unwrap());
    check_entries(entries, 3);
    // Each entry is the answer's token in turn (`context` ends with the answer's ids).
    let f = GgufFile::open(nano_gguf()).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let context = whole["context"].as_array().unwrap();
    let answer_ids = &context[context.len() - entries.len()..];
    for (e, id) in entries.iter().zip(answer_ids) {
        let want = tok.token_bytes(id.as_u64().unwrap() as u32).unwrap();
        let want = want.strip_prefix(&[0xFF]).unwrap_or(want);
        assert_eq!(e["bytes"], json!(want), "{e}");
    }
    let mut best: Vec<(usize, f64)> = reference.iter().copied().enumerate().collect();
    best.sort_by(|a, b| b.1.total_cmp(&a.1));
    for (alt, (_, want)) in entries[0]["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .zip(&best)
    {
        // Both are f32 logits' log-softmax; the server's is rounded to f32 once more.
        assert!(
            (alt["logprob"].as_f64().unwrap() - want).abs() < 1e-4,
            "{alt} vs {want}"
        );
    }
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let lines = stream(addr, "/api/generate", &streamed);
    let streamed: Vec<Value> = lines
        .iter()
        .flat_map(|l| l["logprobs"].as_array().cloned().unwrap_or_default())
        .collect();
    assert_eq!(&streamed, entries);

    // OpenAI chat: whole and streamed carry the same entries.
    let chat = json!({"model": "nano", "messages": [{"role": "user", "content": prompt}],
                      "temperature": 0, "max_tokens": 8, "logprobs": true, "top_logprobs": 2});
    let v = post_ok(addr, "/v1/chat/completions", &chat);
    let content = v["choices"][0]["logprobs"]["content"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(
        content.len() as u64,
        v["usage"]["completion_tokens"].as_u64().unwrap()
    );
    let bytes = check_entries(&content, 2);
    // The nano model's answers are random bytes; whole characters must match the text.
    if let Ok(text) = String::from_utf8(bytes) {
        assert_eq!(
            text,
            v["choices"][0]["message"]["content"].as_str().unwrap()
        );
    }
    let mut chat_stream = chat.clone();
    chat_stream["stream"] = json!(true);
    let chunks = stream(addr, "/v1/chat/completions", &chat_stream);
    let streamed: Vec<Value> = chunks
        .iter()
        .flat_map(|c| {
            c["choices"][0]["logprobs"]["content"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(streamed, content);
    // Without the flag there are none.
    let plain = json!({"model": "nano", "messages": [{"role": "user", "content": prompt}],
                       "temperature": 0, "max_tokens": 2});
    assert!(post_ok(addr, "/v1/chat/completions", &plain)["choices"][0]["logprobs"].is_null());

    // OpenAI completions, the legacy shape: parallel lists.
    let v = post_ok(
        addr,
        "/v1/completions",
        &json!({"model": "nano", "prompt": prompt, "temperature": 0, "max_tokens": 6,
                "logprobs": 2}),
    );
    let lp = &v["choices"][0]["logprobs"];
    let n = v["usage"]["completion_tokens"].as_u64().unwrap() as usize;
    for key in ["tokens", "token_logprobs", "top_logprobs", "text_offset"] {
        assert_eq!(lp[key].as_array().unwrap().len(), n, "{key}: {lp}");
    }
    let offsets: Vec<u64> = lp["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert!(
        offsets.windows(2).all(|w| w[0] <= w[1]) && offsets[0] == 0,
        "{lp}"
    );
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 2);

    // Out of range, or alternatives without logprobs: 400.
    for bad in [
        json!({"logprobs": true, "top_logprobs": 21}),
        json!({"top_logprobs": 2}),
        json!({"logprobs": "yes"}),
    ] {
        let mut body = plain.clone();
        for (k, x) in bad.as_object().unwrap() {
            body[k] = x.clone();
        }
        assert_eq!(post(addr, "/v1/chat/completions", &body).0, 400, "{bad}");
    }
}

#[test]
fn hearth_run_format_constrains_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    store_of(&dir.path().join("models"), &nano_gguf(), &["nano"], "");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .arg("run")
            .args(args)
            .env("HEARTH_MODELS", dir.path().join("models"))
            .env_remove("HEARTH_DEVICE")
            .output()
            .unwrap()
    };
    for (schema, temperature) in schemas().iter().zip(["0", "0.9", "0", "0.9"]) {
        let s = schema.to_string();
        let args = [
            "nano",
            "--format",
            &s,
            "--temperature",
            temperature,
            "--seed",
            "2",
        ];
        let o = run(&[&args[..], &["-n", "300", "Tell me about Tom"]].concat());
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let parsed: Value = serde_json::from_str(out.trim_end())
            .unwrap_or_else(|e| panic!("does not parse ({e}): {out:?}"));
        validate(&parsed, schema, "$").unwrap();
    }
    let o = run(&["nano", "--format", "{\"type\": \"no-such-type\"}", "hi"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--format") && !err.contains("panicked"),
        "{err}"
    );
}
