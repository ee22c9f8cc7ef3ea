//! Importing Hugging Face checkpoints (tests/data/import, made by tools/make_import_models.py
//! with `transformers`): the imported GGUF's tokenizer gives transformers' prompt ids, its
//! logits and greedy tokens are transformers' fp32 ones, every target format loads and runs,
//! and bad folders are clear errors that leave no file behind.

use std::path::{Path, PathBuf};

use hearth::backend::cpu::CpuBackend;
use hearth::backend::{Backend, KvType};
use hearth::gguf::GgufFile;
use hearth::import;
use hearth::model::{Arch, Model};
use hearth::quant::QuantType;
use hearth::quantize::Target;
use hearth::runtime::SoloCache;
use hearth::tokenizer::Tokenizer;
use serde_json::Value;

use crate::common::data;

/// Absolute logit tolerance for the F32 import, as in tests/model.rs: both sides hold the
/// same f32 weights (the Gemma checkpoint's bf16 values widen exactly) and differ only in
/// summation order. Measured maximum differences: 3.1e-5 (tiny-llama, logits up to ~20) and
/// 3.4e-6 (tiny-gemma3); 2e-4 leaves 6x headroom, while a wrong Q/K permutation, a missed
/// norm "+1" or an untied head move logits by units.
const F32_TOLERANCE: f32 = 2e-4;

/// The other full-precision and 8-bit files, against the same fp32 goldens. F16 rounds the
/// Llama's fp32 weights to 11 significant bits (measured max 0.043; the Gemma's bf16 weights
/// are exact in f16: 3.7e-6), BF16 to 8 bits (0.15 on the Llama), Q8_0 to 1/127 of each
/// block's largest value (0.62 on the Llama, 0.16 on the Gemma). Each bound leaves 2.4x or
/// more; a wrong block layout moves logits by many units.
fn tolerance(target: Target) -> Option<f32> {
    match target {
        Target::F32 => Some(F32_TOLERANCE),
        Target::F16 => Some(0.15),
        Target::BF16 => Some(0.5),
        Target::Q8_0 => Some(1.5),
        _ => None,
    }
}

fn golden(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(data(&format!("import/{name}.json"))).unwrap())
        .unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

fn import_to(name: &str, target: Target, dir: &tempfile::TempDir) -> PathBuf {
    let out = dir.path().join(format!("{name}-{target}.gguf"));
    import::import_dir(&data(&format!("import/{name}")), &out, target, |_| {}).unwrap();
    out
}

/// The imported model against the golden: prompt ids from Hearth's tokenizer, last-position
/// logits within `tol`, and (when `greedy`) every greedy token, except where transformers' own
/// top-two margin is inside twice the tolerance. Returns the largest logit difference.
fn check(name: &str, gguf: &Path, tol: f32, greedy: bool) -> f32 {
    let golden = golden(name);
    let f = GgufFile::open(gguf).unwrap();
    let tokenizer = Tokenizer::from_gguf(&f).unwrap();
    let backend = CpuBackend::exact();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let model = Model::load(&backend, &f, spec).unwrap();
    let mut worst = 0f32;
    for case in golden["cases"].as_array().unwrap() {
        let case_name = case["name"].as_str().unwrap();
        let prompt = ids(&case["prompt_ids"]);
        let text = case["prompt_text"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode(text, tokenizer.add_bos()).unwrap(),
            prompt,
            "{name}/{case_name}: Hearth's tokenizer from the imported GGUF"
        );
        let want = ids(&case["greedy_ids"]);
        let margins: Vec<f64> = case["greedy_margins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let mut cache =
            SoloCache::new(&backend, &model, prompt.len() + want.len(), KvType::F32).unwrap();
        let logits = backend
            .read(&cache.forward(&model, &backend, &prompt, 1).unwrap())
            .unwrap();
        let reference = case["last_logits"].as_array().unwrap();
        assert_eq!(logits.len(), reference.len());
        let max_diff = logits
            .iter()
            .zip(reference)
            .map(|(a, b)| (a - b.as_f64().unwrap() as f32).abs())
            .fold(0f32, f32::max);
        assert!(
            max_diff <= tol,
            "{name}/{case_name}: last logits differ by {max_diff} > {tol}"
        );
        worst = worst.max(max_diff);
        if !greedy {
            continue;
        }
        let mut got = vec![hearth::sample::argmax(&logits)];
        while got.len() < want.len() {
            let l = cache
                .forward(&model, &backend, &[*got.last().unwrap()], 1)
                .unwrap();
            got.push(backend.argmax(&l).unwrap()[0]);
        }
        if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
            assert!(
                margins[i] < 2.0 * tol as f64,
                "{name}/{case_name}: greedy token {i} is {} but transformers gave {} (margin {}); \
                 got {got:?}, want {want:?}",
                got[i],
                want[i],
                margins[i]
            );
        }
    }
    worst
}

#[test]
fn tiny_llama_import_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = import_to("tiny-llama", Target::F32, &dir);
    let worst = check("tiny-llama", &out, F32_TOLERANCE, true);
    eprintln!("tiny-llama f32: max logit diff {worst:.2e}");
}

#[test]
fn tiny_gemma3_import_matches_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let out = import_to("tiny-gemma3", Target::F32, &dir);
    let worst = check("tiny-gemma3", &out, F32_TOLERANCE, true);
    eprintln!("tiny-gemma3 f32: max logit diff {worst:.2e}");
}

/// The metadata a GGUF reader needs: architecture keys, the vocabulary kind and
/// pre-tokenizer, special ids, the chat template saved beside the checkpoint, and the tensor
/// layout (untied head for the Llama, tied for Gemma; 1-D tensors in F32).
#[test]
fn imported_metadata_and_tensors_are_what_llama_cpp_writes() {
    let dir = tempfile::tempdir().unwrap();
    for (name, arch, model, pre) in [
        ("tiny-llama", "llama", "gpt2", "smollm"),
        ("tiny-gemma3", "gemma3", "llama", "default"),
    ] {
        let out = import_to(name, Target::BF16, &dir);
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.architecture().unwrap(), arch);
        let s = |k: &str| f.get(k).and_then(|v| v.as_str()).map(str::to_string);
        assert_eq!(s("tokenizer.ggml.model").as_deref(), Some(model), "{name}");
        assert_eq!(s("tokenizer.ggml.pre").as_deref(), Some(pre), "{name}");
        let template =
            std::fs::read_to_string(data(&format!("import/{name}/chat_template.jinja"))).unwrap();
        assert_eq!(s("tokenizer.chat_template"), Some(template), "{name}");
        assert!(f.get_u64(&format!("{arch}.block_count")).unwrap() > 0);
        assert_eq!(f.get_u64("general.file_type").unwrap(), 32);
        for t in f.tensors() {
            let want = if t.dims.len() == 1 {
                QuantType::F32
            } else {
                QuantType::BF16
            };
            assert_eq!(t.qtype, want, "{name}: {}", t.name);
        }
        let has_output = f.tensor("output.weight").is_some();
        assert_eq!(has_output, name == "tiny-llama", "{name}: output.weight");
        let tokenizer = Tokenizer::from_gguf(&f).unwrap();
        let (bos, eos) = match name {
            "tiny-llama" => ("<|im_start|>", "<|im_end|>"),
            _ => ("<bos>", "<eos>"),
        };
        assert_eq!(tokenizer.bos_text(), bos, "{name}");
        assert_eq!(tokenizer.eos_text(), eos, "{name}");
        assert_eq!(
            tokenizer.add_bos(),
            name == "tiny-gemma3",
            "{name}: add_bos"
        );
    }
}

/// Every `--type` imports, loads and runs; the full-precision and 8-bit files stay within
/// their stated tolerances of transformers' logits.
#[test]
fn every_target_imports_loads_and_runs() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["tiny-llama", "tiny-gemma3"] {
        for target_name in Target::names() {
            let target = Target::parse(target_name).unwrap();
            let out = import_to(name, target, &dir);
            let f = GgufFile::open(&out).unwrap();
            assert_eq!(
                f.get_u64("general.file_type").unwrap(),
                target.file_type() as u64
            );
            match tolerance(target) {
                Some(tol) => {
                    let worst = check(name, &out, tol, target == Target::F32);
                    eprintln!("{name} {target_name}: max logit diff {worst:.2e}");
                }
                None => {
                    // Lower-bit targets: the model loads and gives finite logits.
                    check(name, &out, f32::INFINITY, false);
                }
            }
            std::fs::remove_file(&out).unwrap();
        }
    }
}

/// A copy of a checkpoint folder to break.
fn copy_checkpoint(name: &str, dir: &Path) -> PathBuf {
    let src = data(&format!("import/{name}"));
    let dst = dir.join(name);
    std::fs::create_dir(&dst).unwrap();
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn import_err(src: &Path, out: &Path) -> String {
    let e = import::import_dir(src, out, Target::Q8_0, |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        !out.is_file() || out.starts_with(src),
        "{} was written",
        out.display()
    );
    e
}

/// Missing tokenizer files, a truncated shard, an unknown architecture, an output that is the
/// input, an output that cannot be written: each a message naming the problem, and no file
/// (not even a temp file) left in the output's folder.
#[test]
fn bad_checkpoints_are_clear_errors_and_leave_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.gguf");

    let src = copy_checkpoint("tiny-llama", dir.path());
    std::fs::remove_file(src.join("tokenizer.json")).unwrap();
    let e = import_err(&src, &out);
    assert!(e.contains("has no tokenizer.json"), "{e}");
    std::fs::remove_dir_all(&src).unwrap();

    let src = copy_checkpoint("tiny-gemma3", dir.path());
    let shard = src.join("model-00002-of-00002.safetensors");
    let len = std::fs::metadata(&shard).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&shard)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let e = import_err(&src, &out);
    assert!(e.contains("not a valid safetensors file"), "{e}");
    std::fs::remove_file(&shard).unwrap();
    let e = import_err(&src, &out);
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
    std::fs::remove_dir_all(&src).unwrap();

    let src = copy_checkpoint("tiny-llama", dir.path());
    let config = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(
        src.join("config.json"),
        config.replace("LlamaForCausalLM", "FalconForCausalLM"),
    )
    .unwrap();
    let e = import_err(&src, &out);
    assert!(
        e.contains("unsupported architecture \"FalconForCausalLM\""),
        "{e}"
    );
    std::fs::write(src.join("config.json"), &config).unwrap();

    // Output = an input file (through another spelling), or the folder itself.
    let weights = src.join("model.safetensors");
    let before = std::fs::read(&weights).unwrap();
    for clash in [src.join(".").join("model.safetensors"), src.clone()] {
        let e = import_err(&src, &clash);
        assert!(e.contains("is the input"), "{e}");
    }
    assert_eq!(std::fs::read(&weights).unwrap(), before);

    // Outputs that cannot be written: a folder that is not there, a "folder" that is a file,
    // and (Linux) a folder no one may create files in, not even root.
    let e = import_err(&src, &out_dir.join("no/such/model.gguf"));
    assert!(e.contains("is not there"), "{e}");
    let not_a_dir = out_dir.join("file");
    std::fs::write(&not_a_dir, b"x").unwrap();
    let e = import::import_dir(&src, &not_a_dir.join("model.gguf"), Target::Q8_0, |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("file"), "{e}");
    std::fs::remove_file(&not_a_dir).unwrap();
    #[cfg(target_os = "linux")]
    {
        let e = import::import_dir(
            &src,
            Path::new("/proc/self/model.gguf"),
            Target::Q8_0,
            |_| {},
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("/proc/self"), "{e}");
    }
    assert_eq!(files_in(&out_dir), Vec::<String>::new());
    assert!(!files_in(&src)
        .iter()
        .any(|f| f.ends_with(".gguf") || f.contains(".partial-")));
}

/// Through the CLI: an import prints its summary and exits 0; a bad one exits non-zero with
/// the message on stderr and leaves nothing.
#[test]
fn quantize_imports_a_checkpoint_folder_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let hearth = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env("HEARTH_MODELS", dir.path().join("models"))
            .output()
            .unwrap()
    };
    let src = data("import/tiny-gemma3");
    let out = dir.path().join("g.gguf");
    let o = hearth(&[
        "quantize",
        src.to_str().unwrap(),
        out.to_str().unwrap(),
        "--type",
        "int8",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("Q8_0"), "{stdout}");
    assert!(GgufFile::open(&out).is_ok());

    let broken = copy_checkpoint("tiny-llama", dir.path());
    std::fs::remove_file(broken.join("tokenizer.json")).unwrap();
    let bad_out = dir.path().join("bad.gguf");
    let o = hearth(&[
        "quantize",
        broken.to_str().unwrap(),
        bad_out.to_str().unwrap(),
        "--type",
        "q4_k_m",
    ]);
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("tokenizer.json"), "{stderr}");
    assert!(!bad_out.exists());
}

/// A checkpoint whose `model.safetensors` has `name` replaced by the same bytes in `shape`
/// (or by its first rows only, when `shape` holds fewer values).
fn with_tensor_shape(dir: &Path, name: &str, shape: &[usize]) -> PathBuf {
    use safetensors::tensor::{serialize, SafeTensors, TensorView};
    let src = copy_checkpoint("tiny-llama", dir);
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, TensorView)> = Vec::new();
    for (n, v) in st.tensors() {
        let v = if n == name {
            let size = v.data().len() / v.shape().iter().product::<usize>();
            let n_bytes = shape.iter().product::<usize>() * size;
            TensorView::new(v.dtype(), shape.to_vec(), &v.data()[..n_bytes]).unwrap()
        } else {
            v
        };
        views.push((n, v));
    }
    let out = serialize(views, None).unwrap();
    std::fs::write(src.join("model.safetensors"), out).unwrap();
    src
}

/// Part 7 of issue 10, an unsupported tensor shape: a weight with three dimensions, and a
/// projection with fewer rows than config.json implies, are each a clear error naming the
/// tensor, and no file is left.
#[test]
fn issue_10_tensors_of_unsupported_shapes_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("model.gguf");
    let name = "model.layers.0.self_attn.q_proj.weight";
    let config: Value = serde_json::from_str(
        &std::fs::read_to_string(data("import/tiny-llama/config.json")).unwrap(),
    )
    .unwrap();
    let hidden = config["hidden_size"].as_u64().unwrap() as usize;
    for (case, shape) in [
        ("3-D", vec![hidden, hidden / 2, 2]),
        ("short", vec![hidden - 2, hidden]),
    ] {
        let sub = dir.path().join(case);
        std::fs::create_dir(&sub).unwrap();
        let src = with_tensor_shape(&sub, name, &shape);
        let e = import_err(&src, &out);
        eprintln!("{case}: {e}");
        assert!(e.contains(name) || e.contains("attn_q"), "{case}: {e}");
        assert_eq!(files_in(&out_dir), Vec::<String>::new(), "{case}");
    }
}
