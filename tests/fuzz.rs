//! CI's fuzz smoke step: every fuzz target body (`hearth::fuzz`) over its seed corpus and a
//! few thousand deterministic mutations of it. The coverage-guided runs are `tools/fuzz.sh`;
//! this catches a regression on every `cargo test` without libFuzzer. Crashes the fuzzers
//! found are regression tests at the end.

use std::path::Path;
use std::sync::LazyLock;

use hearth::fuzz::{self, seeds, ServerModel};
use hearth::gguf::GgufFile;
use hearth::tokenizer::builtin_template;

use crate::common::data;

/// Mutations per seed; with the seed counts below the whole smoke step takes a few seconds in
/// release.
const MUTATIONS: usize = 600;

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(data(rel)).unwrap()
}

fn open(rel: &str) -> GgufFile {
    GgufFile::open(data(rel)).unwrap()
}

pub fn model_seeds() -> Vec<(String, Vec<u8>)> {
    let nano = open("nano/nano-llama.gguf");
    vec![
        (
            "pico-llama.gguf".into(),
            seeds::pico_model(&nano, "llama").unwrap(),
        ),
        (
            "pico-gemma3.gguf".into(),
            seeds::pico_model(&nano, "gemma3").unwrap(),
        ),
        ("nano-llama.gguf".into(), read("nano/nano-llama.gguf")),
        ("nano-llama3.gguf".into(), read("nano/nano-llama3.gguf")),
    ]
}

pub fn tokenizer_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, rel) in [
        ("nano", "nano/nano-llama.gguf"),
        ("smollm2", "tokenizer/smollm2-vocab.gguf"),
        ("llama3", "tokenizer/llama3-vocab.gguf"),
        ("gemma3", "tokenizer/gemma3-vocab.gguf"),
    ] {
        let bytes = seeds::vocabulary(&open(rel), 600).unwrap();
        out.push((format!("{name}-vocab.gguf"), bytes));
    }
    out
}

pub fn modelfile_seeds() -> Vec<(String, Vec<u8>)> {
    let texts = [
        "FROM ./model.gguf\n",
        "FROM smollm2\nPARAMETER temperature 0.7\nPARAMETER stop \"<|im_end|>\"\nPARAMETER num_ctx 2048\nSYSTEM You are terse.\n",
        "# comment\nfrom model.gguf\nTEMPLATE \"\"\"{% for m in messages %}{{ m.content }}{% endfor %}\"\"\"\nLICENSE \"\"\"MIT\nline two\"\"\"\n",
        "FROM x\nMESSAGE user \"hi\\n\\\"there\\\"\"\nMESSAGE assistant hello\nPARAMETER top_k 40\nPARAMETER seed 1\n",
    ];
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("modelfile-{i}"), t.as_bytes().to_vec()))
        .collect()
}

pub fn template_seeds() -> Vec<(String, Vec<u8>)> {
    let smollm2 = open("tokenizer/smollm2-vocab.gguf");
    let mut out: Vec<(String, Vec<u8>)> = ["gemma3", "llama3", "chatml"]
        .iter()
        .map(|n| {
            (
                format!("{n}.jinja"),
                builtin_template(n).unwrap().as_bytes().to_vec(),
            )
        })
        .collect();
    let own = smollm2.get_str("tokenizer.chat_template").unwrap();
    out.push(("smollm2.jinja".into(), own.as_bytes().to_vec()));
    out
}

/// Request bodies of every route the server parses: Ollama's generate (plain, raw, with a
/// system prompt, options and a stop list, continuing a context), chat, show; OpenAI's chat
/// completions (content as text and as parts, sampling fields, stream options) and
/// completions.
pub fn server_json_seeds() -> Vec<(String, Vec<u8>)> {
    let bodies = [
        (
            "generate",
            r#"{"model":"smollm2","prompt":"Why is the sky blue?"}"#,
        ),
        (
            "generate-options",
            r#"{"model":"smollm2:latest","prompt":"Count to five.","system":"Answer in French.","stream":false,"options":{"temperature":0,"num_predict":16,"top_k":40,"top_p":0.9,"seed":42,"num_ctx":2048,"stop":["\n\n","six"],"repeat_penalty":1.1}}"#,
        ),
        (
            "generate-raw",
            r#"{"model":"smollm2","prompt":"<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n","raw":true,"stream":true,"keep_alive":"5m"}"#,
        ),
        (
            "generate-context",
            r#"{"model":"smollm2","prompt":"And then?","context":[1,9690,198,2683,359,253,5356,2],"options":{"num_predict":8}}"#,
        ),
        (
            "chat",
            r#"{"model":"smollm2","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello!"},{"role":"assistant","content":"Hi. How can I help?"},{"role":"user","content":"Name three colours."}],"stream":false,"options":{"temperature":0.2,"stop":"<|im_end|>"}}"#,
        ),
        ("show", r#"{"model":"smollm2:latest"}"#),
        (
            "v1-chat",
            r#"{"model":"smollm2","messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Say hello "},{"type":"text","text":"twice."}]}],"max_tokens":32,"temperature":0.5,"top_p":0.95,"seed":7,"stop":["END"],"n":1,"stream":true,"stream_options":{"include_usage":true},"response_format":{"type":"text"}}"#,
        ),
        (
            "v1-completions",
            r#"{"model":"smollm2","prompt":["Once upon a time"],"max_completion_tokens":20,"frequency_penalty":0.5,"presence_penalty":0.1,"stream":false}"#,
        ),
    ];
    bodies
        .iter()
        .map(|(name, body)| (format!("{name}.json"), body.as_bytes().to_vec()))
        .collect()
}

/// The server target's model: SmolLM2's vocabulary and chat template.
static SERVER_MODEL: LazyLock<ServerModel> =
    LazyLock::new(|| ServerModel::from_gguf(&open("tokenizer/smollm2-vocab.gguf")).unwrap());

fn server_json(data: &[u8]) {
    fuzz::server_json(&SERVER_MODEL, data);
}

/// A deterministic mutator in the spirit of libFuzzer's: bit flips, interesting bytes and
/// integers (0, -1, 2^31, 2^32, huge counts) written at aligned positions, byte runs
/// removed, duplicated or spliced, truncation.
struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn mutate(&mut self, seed: &[u8]) -> Vec<u8> {
        let mut d = seed.to_vec();
        for _ in 0..1 + self.below(4) {
            if d.is_empty() {
                d.push(self.next() as u8);
                continue;
            }
            // Metadata and tensor infos sit at the start of a GGUF: aim most edits there.
            let span = if self.below(4) == 0 {
                d.len()
            } else {
                d.len().min(1 << 14)
            };
            let at = self.below(span);
            match self.below(7) {
                0 => d[at] ^= 1 << self.below(8),
                1 => d[at] = [0, 0xff, 0x7f, 0x80, b'{', b'%', b'"', b'\n'][self.below(8)],
                2 => {
                    let v: u64 = [
                        0,
                        u64::MAX,
                        1 << 31,
                        1 << 32,
                        4_000_000_000,
                        u64::MAX / 2,
                        65_536,
                        1,
                    ][self.below(8)];
                    let at = at & !3;
                    let n = if self.below(2) == 0 { 4 } else { 8 };
                    let bytes = v.to_le_bytes();
                    let n = n.min(d.len().saturating_sub(at));
                    d[at..at + n].copy_from_slice(&bytes[..n]);
                }
                3 => {
                    let n = 1 + self.below(16);
                    let end = (at + n).min(d.len());
                    d.drain(at..end);
                }
                4 => {
                    let n = 1 + self.below(16);
                    let end = (at + n).min(d.len());
                    let run = d[at..end].to_vec();
                    let to = self.below(d.len());
                    d.splice(to..to, run);
                }
                5 => {
                    let n = self.below(d.len());
                    d.truncate(n);
                }
                _ => {
                    let from = self.below(seed.len());
                    let n = (1 + self.below(32)).min(seed.len() - from);
                    let to = self.below(d.len());
                    d.splice(to..to, seed[from..from + n].iter().copied());
                }
            }
        }
        d
    }
}

fn smoke(seeds: &[(String, Vec<u8>)], target: fn(&[u8]), mutations: usize) -> usize {
    let mut m = Mutator(0x5eed);
    let mut n = 0;
    for (_, seed) in seeds {
        target(seed);
        n += 1;
        for _ in 0..mutations {
            target(&m.mutate(seed));
            n += 1;
        }
    }
    n
}

#[test]
fn fuzz_smoke_gguf_model() {
    let seeds = model_seeds();
    // The seeds themselves must get all the way to a forward pass, or mutations of them
    // would test only the parser.
    for (name, bytes) in &seeds {
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        let spec = hearth::model::Arch::from_gguf(&f).unwrap().spec(&f);
        assert!(spec.is_ok(), "{name}: {:?}", spec.err());
    }
    let n = smoke(&seeds, fuzz::gguf_model, MUTATIONS);
    eprintln!("gguf_model: {n} executions");
}

#[test]
fn fuzz_smoke_tokenizer() {
    let seeds = tokenizer_seeds();
    for (name, bytes) in &seeds {
        let f = GgufFile::from_bytes(bytes.clone()).unwrap();
        let tok = hearth::tokenizer::Tokenizer::from_gguf(&f);
        assert!(tok.is_ok(), "{name}: {:?}", tok.err());
    }
    let n = smoke(&seeds, fuzz::tokenizer, MUTATIONS);
    eprintln!("tokenizer: {n} executions");
}

#[test]
fn fuzz_smoke_modelfile() {
    let seeds = modelfile_seeds();
    for (name, bytes) in &seeds {
        let text = std::str::from_utf8(bytes).unwrap();
        assert!(hearth::store::Modelfile::parse(text).is_ok(), "{name}");
    }
    let n = smoke(&seeds, fuzz::modelfile, 4 * MUTATIONS);
    eprintln!("modelfile: {n} executions");
}

#[test]
fn fuzz_smoke_template() {
    let n = smoke(&template_seeds(), fuzz::template, MUTATIONS);
    eprintln!("template: {n} executions");
}

#[test]
fn fuzz_smoke_server_json() {
    let seeds = server_json_seeds();
    // Every seed gets through its route to the scheduler's door (a model name, options, a
    // rendered and tokenized prompt), or mutations of it would test only the JSON parser.
    // Any body naming a `model` is a valid show body too, so the others count at least 2.
    for (name, bytes) in &seeds {
        let accepted = fuzz::server_json(&SERVER_MODEL, bytes);
        let want = if name == "show.json" { 1 } else { 2 };
        assert!(accepted >= want, "{name}: {accepted} routes accepted it");
    }
    let n = smoke(&seeds, server_json, MUTATIONS);
    eprintln!("server_json: {n} executions");
}

/// Writes every target's seed corpus to `fuzz/seeds/<target>/` for `tools/fuzz.sh`.
#[test]
#[ignore = "writes files; run by tools/fuzz.sh"]
fn write_fuzz_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds");
    // The nano models stay out: libFuzzer mutates mostly their megabytes of weights, and a
    // run gets many more executions from the 30 kB pico models.
    let pico: Vec<_> = model_seeds()
        .into_iter()
        .filter(|(n, _)| n.starts_with("pico"))
        .collect();
    for (target, seeds) in [
        ("gguf_model", pico),
        ("tokenizer", tokenizer_seeds()),
        ("modelfile", modelfile_seeds()),
        ("template", template_seeds()),
        ("server_json", server_json_seeds()),
    ] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in seeds {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
}

/// A fuzz target body by its `fuzz/` name.
type Target = (&'static str, fn(&[u8]));

/// Every input a fuzzer crashed on (tests/data/fuzz/TARGET/), run through its target again.
#[test]
fn fuzz_findings_stay_fixed() {
    let targets: [Target; 5] = [
        ("gguf_model", fuzz::gguf_model),
        ("tokenizer", fuzz::tokenizer),
        ("modelfile", fuzz::modelfile),
        ("template", fuzz::template),
        ("server_json", server_json),
    ];
    let mut n = 0;
    for (name, target) in targets {
        let Ok(dir) = std::fs::read_dir(data(&format!("fuzz/{name}"))) else {
            continue;
        };
        for entry in dir {
            target(&std::fs::read(entry.unwrap().path()).unwrap());
            n += 1;
        }
    }
    assert!(n > 0, "no findings read from tests/data/fuzz");
}

/// Found by the modelfile fuzzer: a `"""` value with CR LF line ends lost one CR per
/// render/parse round trip (line splitting drops the CR of CR LF), so `hearth show
/// --modelfile` did not recreate the model.
#[test]
fn fuzz_modelfile_crlf_in_a_multiline_value_survives_a_round_trip() {
    fuzz::modelfile(b"FROM m\nTEMPLATE \"\"\"a\r\r\nb\"\"\"\n");
    fuzz::modelfile(b"FROM m\r\nSYSTEM \"\"\"x\r\ny\r\n\"\"\"\r\n");
}
