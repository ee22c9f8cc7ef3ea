//! Per-request LoRA (issue 11 part 5): a model made with `ADAPTER` and its base run on one
//! engine, each sequence with its own LoRA set. The runtime applies a set to its rows only
//! (a mixed batch gives each sequence the tokens of a model with the adapter loaded into it);
//! the server batches requests to the base and to the adapter model together without changing
//! a greedy answer, shows one engine in `/api/ps`, and makes adapter models from uploaded
//! blobs (`POST /api/blobs/{digest}`, `/api/create` with `adapters`).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use hearth::backend::cpu::CpuBackend;
use hearth::backend::ops::case::Rng;
use hearth::backend::KvType;
use hearth::engine::{apply_adapters, load_lora_set, AdapterSpec};
use hearth::generate::{generate, Runner};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::options::GenerateOptions;
use hearth::runtime::{AdapterSet, Runtime, Sequence};
use hearth::store::Digest;
use hearth::tokenizer::Tokenizer;
use hearth::train::adapter_file;
use hearth::train::lora::{Lora, LoraConfig, Target};
use serde_json::{json, Value};

use crate::http::{self, call, nano_gguf};

/// A rank-2 LoRA on every projection of nano, its B made non-zero (a fresh one changes
/// nothing), saved as llama.cpp's GGUF at `dir/name`.
pub(crate) fn nano_lora(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let f = GgufFile::open(nano_gguf()).unwrap();
    let c = Arch::from_gguf(&f).unwrap().spec(&f).unwrap().config;
    let config = LoraConfig {
        targets: Target::ALL.to_vec(),
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        rslora: false,
    };
    let mut lora = Lora::new(config, &c, c.n_layers, seed).unwrap();
    let mut rng = Rng::new(seed + 1);
    for p in &mut lora.pairs {
        p.b.iter_mut().for_each(|v| *v = 0.3 * rng.uniform());
    }
    let path = dir.join(name);
    adapter_file::save(&lora, "llama", &path).unwrap();
    path
}

fn greedy(n: usize) -> GenerateOptions {
    let mut o = GenerateOptions::default();
    o.set("temperature", "0").unwrap();
    o.num_predict = Some(n);
    o
}

/// Each request's generated tokens, all run together: `(prompt, LoRA set, num_predict)`.
fn run(
    runner: &mut dyn Runner,
    tok: &Arc<Tokenizer>,
    requests: &[(Vec<u32>, AdapterSet, usize)],
) -> Vec<Vec<u32>> {
    let mut seqs: Vec<Sequence> = requests
        .iter()
        .map(|(p, a, n)| {
            let mut s = Sequence::new(tok.clone(), p.clone(), &greedy(*n), 256).unwrap();
            s.set_adapter(*a);
            s
        })
        .collect();
    let mut out = vec![Vec::new(); requests.len()];
    generate(runner, &mut seqs, &AtomicBool::new(false), &mut |i, e| {
        out[i].extend(e.token);
        Ok(())
    })
    .unwrap();
    assert_eq!(runner.blocks_in_use(), 0);
    out
}

/// A LoRA set applied to some rows of a batch gives each sequence exactly the tokens of a
/// model with that adapter loaded into it (and the base rows the base model's), on the
/// default CPU backend: the gathered rows go through the same kernels as whole batches do.
#[test]
fn a_lora_set_on_its_rows_gives_the_tokens_of_the_adapter_loaded_into_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let a = nano_lora(dir.path(), "a.gguf", 3);
    let b = nano_lora(dir.path(), "b.gguf", 9);
    let f = GgufFile::open(nano_gguf()).unwrap();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let runtime = |adapters: &[AdapterSpec]| {
        let backend = CpuBackend::new();
        let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
        let mut model = Model::load(&backend, &f, spec).unwrap();
        apply_adapters(&backend, &f, &mut model, adapters).unwrap();
        Runtime::new(Arc::new(backend), Arc::new(model), 8 * 256, KvType::F16).unwrap()
    };
    let spec = |p: &Path| AdapterSpec {
        path: p.to_path_buf(),
        scale: 1.0,
    };
    let mut shared = runtime(&[]);
    let set_a = shared.add_lora_set(&load_lora_set(&f, &[spec(&a)]).unwrap());
    let set_b = shared.add_lora_set(&load_lora_set(&f, &[spec(&b)]).unwrap());
    let (none, set_a, set_b) = (AdapterSet::NONE, set_a.unwrap(), set_b.unwrap());
    let n_vocab = tok.n_vocab() as u32;
    // Pairs of the same prompt under different sets: they must never share cached blocks.
    let sets = [none, set_a, set_b, set_a, none, set_b, set_a, none];
    let requests: Vec<(Vec<u32>, AdapterSet, usize)> = [1usize, 1, 17, 17, 40, 40, 9, 33]
        .iter()
        .zip(sets)
        .enumerate()
        .map(|(i, (&len, set))| {
            let s = (i / 2) as u32;
            let prompt = (0..len as u32)
                .map(|j| (j * 7919 + 13 + 101 * s) % n_vocab)
                .collect();
            (prompt, set, 12 + i)
        })
        .collect();
    let together = run(&mut shared, &tok, &requests);

    for (set, path) in [(none, None), (set_a, Some(&a)), (set_b, Some(&b))] {
        let specs: Vec<AdapterSpec> = path.map(|p| spec(p)).into_iter().collect();
        let mut own = runtime(&specs);
        for (i, r) in requests.iter().enumerate().filter(|(_, r)| r.1 == set) {
            let alone = run(&mut own, &tok, &[(r.0.clone(), none, r.2)]);
            assert_eq!(together[i], alone[0], "request {i} (set {set:?})");
        }
    }
    // The sets change the answers: the same prompts differ across sets.
    assert_ne!(together[0], together[1], "set a changes the greedy tokens");
    assert_ne!(together[2], together[3], "sets a and b differ");
    assert_ne!(together[4], together[5], "set b changes the greedy tokens");
}

/// A server over a store holding nano and `nano-lora` (nano with `ADAPTER lora`), up to
/// `num_parallel` requests at once.
fn serve_base_and_adapter(lora: &Path, num_parallel: usize) -> http::Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("models");
    http::store_of(&root, &nano_gguf(), &["nano"], "SYSTEM Be brief.\n");
    let extra = format!("SYSTEM Be brief.\nADAPTER {}\n", lora.display());
    let store = http::store_of(&root, &nano_gguf(), &["nano-lora"], &extra);
    let config = hearth::server::Config {
        limits: hearth::server::Limits {
            num_parallel,
            max_queue: 64,
        },
        ..Default::default()
    };
    let server = hearth::server::start(store, config).unwrap();
    http::Fixture {
        addr: server.addr(),
        server: Some(server),
        dir,
        key: None,
    }
}

fn answer(fx: &http::Fixture, model: &str, prompt: &str, n: usize) -> String {
    let body = json!({"model": model, "prompt": prompt, "stream": false,
                      "options": {"temperature": 0, "num_predict": n}});
    let (status, v) = fx.post("/api/generate", &body);
    assert_eq!(status, 200, "{v}");
    v["response"].as_str().unwrap().to_string()
}

/// Eight greedy requests in flight, half to the base and half to the adapter model, return
/// exactly what each returns alone; the adapter model answers differently from the base; and
/// `/api/ps` shows both names on one engine that batched them together.
#[test]
fn base_and_adapter_models_share_one_engine_and_batching_keeps_every_answer() {
    let lora_dir = tempfile::tempdir().unwrap();
    let lora = nano_lora(lora_dir.path(), "lora.gguf", 3);
    let fx = serve_base_and_adapter(&lora, 8);
    let requests: Vec<(&str, String, usize)> = (0..8)
        .map(|i| {
            let model = ["nano", "nano-lora"][i % 2];
            let prompt = format!("Story {}: the {} went", i / 2, ["cat", "sea"][i / 4]);
            (model, prompt, 16 + 2 * i)
        })
        .collect();
    let solo: Vec<String> = requests
        .iter()
        .map(|(m, p, n)| answer(&fx, m, p, *n))
        .collect();
    let together: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = requests
            .iter()
            .map(|(m, p, n)| {
                let fx = &fx;
                s.spawn(move || answer(fx, m, p, *n))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, solo);
    for pair in solo.chunks(2) {
        assert_ne!(pair[0], pair[1], "the adapter model answers differently");
    }
    fx.assert_no_leak();
    let ps = fx.settled();
    assert_eq!(ps.len(), 2, "{ps:?}");
    let engines: std::collections::BTreeSet<_> = ps
        .iter()
        .map(|m| m["hearth"]["engine"].as_u64().unwrap())
        .collect();
    assert_eq!(engines.len(), 1, "one engine serves both: {ps:?}");
    let adapters: std::collections::BTreeSet<_> = ps
        .iter()
        .map(|m| m["hearth"]["adapter"].as_u64().unwrap())
        .collect();
    assert_eq!(adapters.len(), 2, "{ps:?}");
    assert!(
        ps[0]["hearth"]["peak_running"].as_u64().unwrap() >= 2,
        "the requests were batched: {ps:?}"
    );
}

fn head(fx: &http::Fixture, path: &str) -> u16 {
    call(fx.addr(), "HEAD", path, &[], b"").status
}

/// A LoRA file uploaded as a blob (its digest checked) becomes an adapter model through
/// `/api/create`'s `adapters`, which runs on the base's engine and answers differently.
#[test]
fn create_with_adapters_makes_a_model_from_an_uploaded_blob() {
    let lora_dir = tempfile::tempdir().unwrap();
    let lora = nano_lora(lora_dir.path(), "lora.gguf", 5);
    let bytes = std::fs::read(&lora).unwrap();
    let digest = Digest::of(&bytes).to_string();
    let fx = http::start(&["nano"], |_| {});
    let blob = format!("/api/blobs/{digest}");
    assert_eq!(head(&fx, &blob), 404);
    let upload = |path: &str, body: &[u8]| call(fx.addr(), "POST", path, &[], body);

    // A body whose sha256 is not the digest named is refused, and nothing is kept.
    let r = upload(&blob, b"not the adapter");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("digest mismatch"));
    assert_eq!(head(&fx, &blob), 404);
    assert_eq!(upload("/api/blobs/sha256:xyz", &bytes).status, 400);
    let create = |adapters: Value| {
        let body = json!({"model": "mybot", "from": "nano", "adapters": adapters,
                          "stream": false});
        fx.post("/api/create", &body)
    };
    let (status, v) = create(json!({ "lora.gguf": digest }));
    assert_eq!(status, 400, "a blob not uploaded yet: {v}");
    assert!(
        v["error"].as_str().unwrap().contains("not in the store"),
        "{v}"
    );

    let r = upload(&blob, &bytes);
    assert_eq!(r.status, 201, "{}", r.body);
    assert_eq!(head(&fx, &blob), 200);
    let (status, v) = create(json!({ "lora.bin": digest }));
    assert_eq!(status, 400, "{v}");
    // The nano model's own GGUF is no adapter: the store refuses it by its contents.
    let model_digest = Digest::of(&std::fs::read(nano_gguf()).unwrap()).to_string();
    let r = upload(
        &format!("/api/blobs/{model_digest}"),
        &std::fs::read(nano_gguf()).unwrap(),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let (status, v) = create(json!({ "not-an-adapter.gguf": model_digest }));
    assert_ne!(status, 200, "{v}");
    let (status, v) = create(json!({ "lora.gguf": digest }));
    assert_eq!((status, &v["status"]), (200, &json!("success")), "{v}");

    let prompt = "Once upon a time";
    let base = answer(&fx, "nano", prompt, 24);
    let adapted = answer(&fx, "mybot", prompt, 24);
    assert_ne!(base, adapted);
    assert_eq!(answer(&fx, "mybot", prompt, 24), adapted);
    let ps = fx.settled();
    assert_eq!(ps.len(), 2, "{ps:?}");
    assert_eq!(
        ps[0]["hearth"]["engine"], ps[1]["hearth"]["engine"],
        "{ps:?}"
    );
    fx.assert_no_leak();
}
