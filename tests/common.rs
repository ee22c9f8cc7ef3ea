//! Helpers shared by the test areas: test data paths, the nano model for the training
//! tests, and the real-model lookup.

use std::path::PathBuf;

use hearth::backend::cpu::CpuBackend;
use hearth::backend::ops::case::Rng;
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::train::data::Example;

pub fn data(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(rel)
}

/// The nano model on the exact CPU backend (f32 activations, exact input gradients): what
/// the training tests check gradients and losses on.
pub fn nano_exact() -> (GgufFile, Model<CpuBackend>, CpuBackend) {
    let f = GgufFile::open(data("nano/nano-llama.gguf")).unwrap();
    let b = CpuBackend::exact();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let model = Model::load(&b, &f, spec).unwrap();
    (f, model, b)
}

/// `n` random tokens below `vocab` (drawn from `seed`), every one trained on.
pub fn random_example(n: usize, vocab: usize, seed: u64) -> Example {
    let mut rng = Rng::new(seed);
    let tokens: Vec<u32> = (0..n).map(|_| rng.below(vocab) as u32).collect();
    Example::new(tokens, vec![true; n])
}

/// A real model for the tests that need one: the path in `env_var`, else the model pulled into
/// the store under `store_name` (where `hearth pull` put it). `None` (and a "skipped" line) when
/// neither is there, so a machine without the download still passes the hermetic tests.
pub fn real_model(env_var: &str, store_name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = hearth_store_blob(store_name) {
        return Some(p);
    }
    eprintln!(
        "skipped: {env_var} is not set and `{store_name}` is not in the model store \
         (run `hearth pull {store_name}` or set {env_var} to the GGUF path)"
    );
    None
}

fn hearth_store_blob(name: &str) -> Option<PathBuf> {
    let root = match std::env::var_os("HEARTH_MODELS") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".hearth/models"),
    };
    let (model, tag) = name.split_once(':').unwrap_or((name, "latest"));
    let manifest = std::fs::read_to_string(root.join("manifests").join(model).join(tag)).ok()?;
    let v: serde_json::Value = serde_json::from_str(&manifest).ok()?;
    let digest = v["layers"].as_array()?.iter().find(|l| {
        l["mediaType"]
            .as_str()
            .is_some_and(|m| m.ends_with(".model"))
    })?["digest"]
        .as_str()?
        .replace(':', "-");
    let p = root.join("blobs").join(digest);
    p.exists().then_some(p)
}
