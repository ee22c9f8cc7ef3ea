//! Fuzz target bodies: each takes arbitrary bytes and must return (an `Err` is fine) without
//! panicking, aborting or hanging. The `cargo fuzz` targets under `fuzz/` call these, and the
//! test suite runs them over the seed corpus and deterministic mutations (CI's smoke step), so
//! both exercise the same code. `seeds` builds small valid inputs for each target.

use crate::backend::cpu::CpuBackend;
use crate::backend::KvType;
use crate::gguf::GgufFile;
use crate::model::{Arch, MemoryPlan, Model};
use crate::runtime::SoloCache;
use crate::server::request::{self, Prompt};
use crate::server::{ollama, openai, tools, ApiError};
use crate::store::{Digest, Layer, LayerKind, Manifest, ModelName, Modelfile, StoredModel};
use crate::tokenizer::{ChatTemplate, Message, Tokenizer};

/// Tensor data the model target loads at most: a fuzz input is a small model, and this keeps
/// one execution to milliseconds.
pub const MAX_FUZZ_TENSOR_BYTES: u64 = 4 << 20;
/// Context of the model target's session.
const FUZZ_CTX: usize = 8;
/// Memory the model target's session may take (KV cache and scratch).
const MAX_FUZZ_SESSION_BYTES: u64 = 64 << 20;

/// GGUF bytes -> `GgufFile` -> model spec -> CPU model -> one token forward.
pub fn gguf_model(data: &[u8]) {
    let Ok(f) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let tensor_bytes: u64 = f.tensors().iter().map(|t| t.n_bytes as u64).sum();
    if tensor_bytes > MAX_FUZZ_TENSOR_BYTES {
        return;
    }
    let _ = run_one_token(&f);
}

fn run_one_token(f: &GgufFile) -> crate::Result<()> {
    let spec = Arch::from_gguf(f)?.spec(f)?;
    let plan = MemoryPlan::new(&spec, f)?;
    plan.check_fits_in(FUZZ_CTX, KvType::F16, Some(MAX_FUZZ_SESSION_BYTES))?;
    let backend = CpuBackend::new();
    let model = Model::load(&backend, f, spec)?;
    let mut cache = SoloCache::new(&backend, &model, FUZZ_CTX, KvType::F16)?;
    let ids = [0u32, (model.config.n_vocab as u32).saturating_sub(1)];
    cache.forward(&model, &backend, &ids, 1)?;
    Ok(())
}

/// GGUF bytes -> `Tokenizer` (vocabulary metadata) -> encode and decode a fixed text.
pub fn tokenizer(data: &[u8]) {
    let Ok(f) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let Ok(tok) = Tokenizer::from_gguf(&f) else {
        return;
    };
    let text = "Hello, world! <s> 123 héllo\n\t  日本 <|im_start|>";
    if let Ok(ids) = tok.encode(text, true) {
        let _ = tok.decode(&ids);
        let mut stream = tok.stream_decoder();
        for &id in &ids {
            let _ = stream.push(id);
        }
        let _ = stream.finish();
    }
    let _ = tok.decode(&[0, u32::MAX, tok.n_vocab() as u32]);
}

/// Text -> `Modelfile::parse`; what parses renders back to text that parses to the same.
pub fn modelfile(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(mf) = Modelfile::parse(&text) else {
        return;
    };
    let rendered = mf.render();
    let again = Modelfile::parse(&rendered)
        .unwrap_or_else(|e| panic!("rendered Modelfile does not parse: {e}\n{rendered}"));
    assert_eq!(
        without_lines(mf),
        without_lines(again),
        "render/parse round trip"
    );
}

fn without_lines(mut mf: Modelfile) -> Modelfile {
    mf.from_line = 0;
    for p in &mut mf.parameters {
        p.line = 0;
    }
    mf
}

/// Template source (the input as text) -> `ChatTemplate` -> render a short conversation,
/// under the template fuel and output limit.
pub fn template(data: &[u8]) {
    let source = String::from_utf8_lossy(data);
    let Ok(t) = ChatTemplate::new(&source, "<s>", "</s>") else {
        return;
    };
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "Hi"),
        Message::new("assistant", "Hello!"),
        Message::new("user", "Why is the sky blue?"),
    ];
    let _ = t.render(&messages, true);
}

/// What the server holds of a model that a request uses before the model runs: the stored
/// model (its `SYSTEM`, `MESSAGE`s and `PARAMETER`s), its tokenizer and its chat template.
pub struct ServerModel {
    stored: StoredModel,
    tokenizer: Tokenizer,
    template: Result<ChatTemplate, String>,
}

impl ServerModel {
    /// A model with the vocabulary and chat template of `vocab` (a GGUF's tokenizer
    /// metadata), a system prompt, one earlier exchange and a `stop` and `temperature`
    /// parameter, so that requests layer over all of them.
    pub fn from_gguf(vocab: &GgufFile) -> crate::Result<ServerModel> {
        let tokenizer = Tokenizer::from_gguf(vocab)?;
        let digest = Digest::of(b"fuzz");
        let stored = StoredModel {
            name: "fuzz".parse()?,
            digest,
            manifest: Manifest::new(Layer::new(LayerKind::Model, digest, 0), Vec::new()),
            model_path: "fuzz.gguf".into(),
            template: None,
            system: Some("You are terse.".into()),
            parameters: vec![
                ("stop".into(), "<|im_end|>".into()),
                ("temperature".into(), "0.7".into()),
            ],
            licenses: Vec::new(),
            messages: vec![
                Message::new("user", "Hi"),
                Message::new("assistant", "Hello!"),
            ],
            adapters: Vec::new(),
        };
        let template =
            crate::prompt::chat_template(&stored, vocab, &tokenizer).map_err(|e| e.to_string());
        Ok(ServerModel {
            stored,
            tokenizer,
            template,
        })
    }

    /// What a handler does once it has a request's model name, options and prompt, up to
    /// handing the ids to the scheduler: the name parsed as the store parses it, the options
    /// layered over the model's, the prompt rendered and tokenized (`request::prepare`).
    fn prepare(
        &self,
        name: &str,
        overrides: &[(String, String)],
        prompt: Prompt,
    ) -> Result<Vec<u32>, ApiError> {
        name.parse::<ModelName>()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        request::layered_options(&self.stored, overrides)?;
        let text = request::prompt_text(&self.template, prompt)?;
        request::encode(&self.tokenizer, &text)
    }
}

/// A request body -> every route's parser and checks (Ollama's `/api/generate`, `/api/chat`,
/// `/api/show`; OpenAI's `/v1/chat/completions`, `/v1/completions`), and for each that
/// accepts it, what its handler does next before the model runs (`ServerModel::prepare`).
/// Returns how many routes accepted the body all the way (the smoke test checks its seeds).
pub fn server_json(model: &ServerModel, data: &[u8]) -> usize {
    let stored = &model.stored;
    let mut accepted = 0;
    if let Ok((body, overrides)) = ollama::generate_request(data) {
        // An empty prompt without context only loads the model.
        if !body.prompt.is_empty() || !body.context.is_empty() {
            let mut ok = body
                .prompt(stored, &model.template)
                .and_then(|prompt| model.prepare(&body.model, &overrides, prompt))
                .is_ok();
            if !body.context.is_empty() {
                ok &= body
                    .prompt(stored, &model.template)
                    .and_then(|prompt| {
                        request::continue_context(
                            &model.tokenizer,
                            &model.template,
                            &body.context,
                            prompt,
                        )
                    })
                    .is_ok();
            }
            accepted += usize::from(ok);
        }
    }
    if let Ok((body, messages, overrides)) = ollama::chat_request(data) {
        if !messages.is_empty() {
            let messages = request::chat_messages(stored, messages);
            let ok = tools::chat_prompt(messages, &body.tools, &model.template, &body.model)
                .and_then(|prompt| model.prepare(&body.model, &overrides, prompt));
            accepted += usize::from(ok.is_ok());
        }
    }
    accepted += usize::from(ollama::show_request(data).is_ok());
    if let Ok((r, messages)) = openai::chat_request(data) {
        let messages = request::chat_messages(stored, messages);
        let ok = model.prepare(&r.model, &r.overrides, Prompt::Chat(messages));
        accepted += usize::from(ok.is_ok());
    }
    if let Ok((r, prompt)) = openai::completion_request(data) {
        let messages = request::generate_messages(stored, None, &prompt);
        let ok = model.prepare(&r.model, &r.overrides, Prompt::Chat(messages));
        accepted += usize::from(ok.is_ok());
    }
    accepted
}

/// Small valid inputs for each target, made from the nano models' metadata: every target's
/// corpus starts from files that get past parsing.
pub mod seeds {
    use crate::gguf::{Array, GgufFile, GgufWriter, Value};
    use crate::quant::QuantType;
    use crate::Result;

    /// A one-layer model of width 32 with the nano model's tokenizer, in the layout of `arch`
    /// (`llama` or `gemma3`), its tensors in several block formats (a K-quant for the FFN
    /// down projection, whose rows are 256 long) with deterministic bytes.
    pub fn pico_model(nano: &GgufFile, arch: &str) -> Result<Vec<u8>> {
        let mut w = GgufWriter::new();
        for (k, v) in nano.metadata() {
            if k.starts_with("tokenizer.") || k == "general.name" {
                w.set(k, v.clone())?;
            }
        }
        let n_vocab = nano
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map_or(0, |a| a.len() as u64);
        let (n_embd, n_ff, n_heads, n_kv_heads, head_dim) = (32u64, 256u64, 2u64, 1u64, 16u64);
        w.set("general.architecture", Value::String(arch.into()))?;
        let key = |k: &str| format!("{arch}.{k}");
        for (k, v) in [
            ("block_count", 1),
            ("context_length", 64),
            ("embedding_length", n_embd),
            ("feed_forward_length", n_ff),
            ("attention.head_count", n_heads),
            ("attention.head_count_kv", n_kv_heads),
            ("attention.key_length", head_dim),
            ("attention.value_length", head_dim),
            ("rope.dimension_count", head_dim),
        ] {
            w.set(key(k), Value::U32(v as u32))?;
        }
        w.set(key("attention.layer_norm_rms_epsilon"), Value::F32(1e-5))?;
        w.set(key("rope.freq_base"), Value::F32(10_000.0))?;
        if arch == "gemma3" {
            w.set(key("attention.sliding_window"), Value::U32(4))?;
        }
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut tensor = |w: &mut GgufWriter, name: &str, rows: u64, cols: u64, q: QuantType| {
            let n_bytes = q.row_bytes(cols as usize).unwrap_or(0) * rows as usize;
            let data = match q {
                // Norm weights near 1, small float weights; block formats get random bytes
                // whose f16 scales are kept small and finite.
                QuantType::F32 => (0..rows * cols)
                    .flat_map(|_| (0.5 + next(&mut seed) as f32 / 256.0).to_le_bytes())
                    .collect(),
                _ => {
                    let mut d: Vec<u8> = (0..n_bytes).map(|_| next(&mut seed)).collect();
                    if q != QuantType::F16 {
                        for block in d.chunks_mut(q.block_bytes()) {
                            // f16 scale (and Q4_1/Q5_1 minimum) of about 0.01.
                            block[1] = 0x20;
                            block[3] = 0x20;
                        }
                    }
                    d
                }
            };
            w.add_tensor(name, &[cols, rows], q, data)
        };
        let (q_dim, kv_dim) = (n_heads * head_dim, n_kv_heads * head_dim);
        let k_quant = if arch == "gemma3" {
            QuantType::Q4_K
        } else {
            QuantType::Q6_K
        };
        tensor(
            &mut w,
            "token_embd.weight",
            n_vocab,
            n_embd,
            QuantType::Q8_0,
        )?;
        let layer: &[(&str, u64, u64, QuantType)] = &[
            ("attn_norm", 1, n_embd, QuantType::F32),
            ("attn_q", q_dim, n_embd, QuantType::Q4_0),
            ("attn_k", kv_dim, n_embd, QuantType::Q4_1),
            ("attn_v", kv_dim, n_embd, QuantType::Q5_0),
            ("attn_output", n_embd, q_dim, QuantType::Q5_1),
            ("ffn_norm", 1, n_embd, QuantType::F32),
            ("ffn_gate", n_ff, n_embd, QuantType::Q8_0),
            ("ffn_up", n_ff, n_embd, QuantType::F16),
            ("ffn_down", n_embd, n_ff, k_quant),
        ];
        for &(name, rows, cols, q) in layer {
            tensor(&mut w, &format!("blk.0.{name}.weight"), rows, cols, q)?;
        }
        if arch == "gemma3" {
            for (name, len) in [
                ("attn_q_norm", head_dim),
                ("attn_k_norm", head_dim),
                ("post_attention_norm", n_embd),
                ("post_ffw_norm", n_embd),
            ] {
                tensor(
                    &mut w,
                    &format!("blk.0.{name}.weight"),
                    1,
                    len,
                    QuantType::F32,
                )?;
            }
        }
        tensor(&mut w, "output_norm.weight", 1, n_embd, QuantType::F32)?;
        Ok(w.to_bytes())
    }

    /// The vocabulary metadata of `f` alone (no tensors), with at most `max_tokens` tokens:
    /// merges that name a dropped token and special ids past the end are left out.
    pub fn vocabulary(f: &GgufFile, max_tokens: usize) -> Result<Vec<u8>> {
        let mut w = GgufWriter::new();
        let tokens: Vec<String> = f
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .and_then(Array::strings)
            .map(|p| p.iter().take(max_tokens).map(str::to_string).collect())
            .unwrap_or_default();
        let kept: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
        for (k, v) in f.metadata() {
            if !k.starts_with("tokenizer.") && k != "general.architecture" {
                continue;
            }
            let value = match (k, v) {
                ("tokenizer.ggml.merges", Value::Array(Array::Strings(merges))) => {
                    Value::Array(Array::from_strings(merges.iter().filter(|m| {
                        let Some((a, b)) = m.split_once(' ') else {
                            return false;
                        };
                        kept.contains(a) && kept.contains(b) && kept.contains(&*(a.to_string() + b))
                    })))
                }
                (_, Value::Array(a)) if a.len() > max_tokens => {
                    Value::Array(a.truncated(max_tokens))
                }
                (k, v) if k.ends_with("_token_id") => match v.as_u64() {
                    Some(id) if id as usize >= tokens.len() => continue,
                    _ => v.clone(),
                },
                _ => v.clone(),
            };
            w.set(k, value)?;
        }
        Ok(w.to_bytes())
    }

    fn next(state: &mut u64) -> u8 {
        // splitmix64: deterministic bytes without a dependency.
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as u8
    }
}
