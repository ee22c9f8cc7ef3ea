//! The `hearth` binary end to end, in a temp `HEARTH_MODELS`: exit codes, `Error:` messages,
//! and the store verbs on the nano model. Nothing here downloads.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn nano_gguf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nano/nano-llama.gguf")
}

fn hearth(models: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_MODELS", models)
        .env_remove("HEARTH_DEVICE")
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails with everything the command printed.
fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(o),
        stderr(o)
    );
}

fn assert_error(o: &Output, want: &str) {
    assert_eq!(o.status.code(), Some(1), "stderr: {}", stderr(o));
    let err = stderr(o);
    // Progress lines may come first; the error is one `Error: ` line (clap adds usage after).
    assert!(err.lines().any(|l| l.starts_with("Error: ")), "{err}");
    assert!(err.contains(want), "{err:?} lacks {want:?}");
    assert!(
        !err.contains("panicked") && !err.contains("RUST_BACKTRACE"),
        "{err}"
    );
}

fn create_nano(models: &Path, name: &str, extra: &str) {
    let dir = models.parent().unwrap();
    let modelfile = dir.join(format!("{name}.Modelfile"));
    std::fs::write(
        &modelfile,
        format!("FROM {}\n{extra}", nano_gguf().display()),
    )
    .unwrap();
    assert_ok(&hearth(
        models,
        &["create", name, "-f", modelfile.to_str().unwrap()],
    ));
}

#[test]
fn an_unknown_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let o = hearth(&models, &["show", "nosuch"]);
    assert_error(&o, "model nosuch:latest not found");
    assert!(stderr(&o).contains("hearth list") && stderr(&o).contains("smollm2, gemma3:270m"));
    assert_error(&hearth(&models, &["rm", "nosuch"]), "not found");
    assert_error(&hearth(&models, &["cp", "nosuch", "other"]), "not found");
    assert_error(
        &hearth(&models, &["pull", "nosuch"]),
        "not a built-in model",
    );
    assert_error(&hearth(&models, &["show", "../etc"]), "invalid model name");
}

#[test]
fn bad_arguments_are_errors_with_status_1() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    assert_error(&hearth(&models, &["frobnicate"]), "unrecognized subcommand");
    let help = hearth(&models, &["--help"]);
    assert_ok(&help);
    assert!(stdout(&help).contains("Examples:"));
}

#[test]
fn an_invalid_modelfile_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let modelfile = dir.path().join("Modelfile");
    std::fs::write(&modelfile, "FROM ./x.gguf\nPARAMETER\n").unwrap();
    let o = hearth(&models, &["create", "x", "-f", modelfile.to_str().unwrap()]);
    assert_error(&o, "Modelfile line 2: PARAMETER needs a name and a value");
    assert!(stderr(&o).contains(modelfile.to_str().unwrap()));

    std::fs::write(&modelfile, "FROM ./x.gguf\n").unwrap();
    let o = hearth(&models, &["create", "x", "-f", modelfile.to_str().unwrap()]);
    assert_error(&o, "Modelfile line 1: FROM ./x.gguf: there is no file");
    let o = hearth(&models, &["create", "x", "-f", "/nonexistent/Modelfile"]);
    assert_error(&o, "cannot read the Modelfile /nonexistent/Modelfile");
}

#[test]
fn store_verbs_on_the_nano_model() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    create_nano(
        &models,
        "nano",
        "SYSTEM Be brief.\nPARAMETER stop \"<|im_end|>\"\n",
    );

    let list = stdout(&hearth(&models, &["list"]));
    let lines: Vec<&str> = list.lines().collect();
    assert_eq!(lines.len(), 2, "{list}");
    assert!(
        lines[0].starts_with("NAME")
            && lines[0].contains("ID")
            && lines[0].contains("SIZE")
            && lines[0].contains("MODIFIED")
    );
    assert!(
        lines[1].starts_with("nano:latest") && lines[1].contains("1.8 MB"),
        "{list}"
    );

    let show = hearth(&models, &["show", "nano"]);
    assert_ok(&show);
    let show = stdout(&show);
    for want in [
        "architecture",
        "llama",
        "parameters",
        "context length",
        "256",
        "embedding length",
        "quantization",
        "Be brief.",
        "<|im_start|>",
    ] {
        assert!(show.contains(want), "{want:?} missing from:\n{show}");
    }
    let modelfile = stdout(&hearth(&models, &["show", "nano", "--modelfile"]));
    assert!(
        modelfile.contains(&format!("FROM {}", models.join("blobs").display())),
        "{modelfile}"
    );
    assert_eq!(
        stdout(&hearth(&models, &["show", "nano", "--system"])),
        "Be brief.\n"
    );
    assert!(stdout(&hearth(&models, &["show", "nano", "--template"])).contains("<|im_start|>"));

    // The shown Modelfile recreates the model: same manifest, same ID.
    let file = dir.path().join("Shown.Modelfile");
    std::fs::write(&file, &modelfile).unwrap();
    assert_ok(&hearth(
        &models,
        &["create", "again", "-f", file.to_str().unwrap()],
    ));
    assert_ok(&hearth(&models, &["cp", "nano", "nano:copy"]));
    let list = stdout(&hearth(&models, &["ls"]));
    let ids: Vec<&str> = list
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{list}");
    assert!(ids.iter().all(|id| *id == ids[0]), "{list}");

    for name in ["nano", "again", "nano:copy"] {
        let o = hearth(&models, &["rm", name]);
        assert_ok(&o);
        assert!(stdout(&o).contains("deleted"));
    }
    assert_eq!(stdout(&hearth(&models, &["list"])).lines().count(), 1);
    assert_eq!(
        std::fs::read_dir(models.join("blobs")).unwrap().count(),
        0,
        "blobs are collected"
    );
}

#[test]
fn verify_finds_a_blob_changed_in_place_that_run_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    create_nano(&models, "nano", "SYSTEM Be brief.\n");
    create_nano(&models, "other", "");
    let o = hearth(&models, &["verify"]);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(
        out.contains("nano:latest: ok") && out.contains("other:latest: ok"),
        "{out}"
    );

    // Flip one byte of the GGUF blob, keeping its size: `run` does not hash it, `verify` does.
    let shown = stdout(&hearth(&models, &["show", "nano", "--modelfile"]));
    let blob = shown
        .lines()
        .find_map(|l| l.strip_prefix("FROM /"))
        .map(|p| PathBuf::from(format!("/{p}")))
        .unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::write(&blob, &bytes).unwrap();
    assert_ok(&hearth(
        &models,
        &[
            "run",
            "nano",
            "--raw",
            "-n",
            "1",
            "--temperature",
            "0",
            "Hi",
        ],
    ));
    let o = hearth(&models, &["verify", "nano"]);
    assert_error(&o, "nano:latest failed verification");
    let out = stdout(&o);
    assert!(
        out.contains("nano:latest: CORRUPT") && out.contains(&blob.display().to_string()),
        "{out}"
    );
    assert_error(&hearth(&models, &["verify", "nosuch"]), "not found");
}

#[test]
fn run_streams_only_generated_text_to_stdout() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    create_nano(&models, "nano", "");
    let o = hearth(
        &models,
        &[
            "run",
            "nano",
            "--raw",
            "-n",
            "6",
            "--temperature",
            "0",
            "--verbose",
            "Once upon a time",
        ],
    );
    assert_ok(&o);
    let err = stderr(&o);
    for want in [
        "load duration:",
        "prompt eval count:    ",
        "prompt eval rate:",
        "eval count:",
        "eval rate:",
    ] {
        assert!(err.contains(want), "{want:?} missing from stderr:\n{err}");
    }
    let out = stdout(&o);
    assert!(!out.contains("duration") && out.ends_with('\n'), "{out:?}");

    // Greedy decoding is deterministic, from the argument or from stdin.
    let again = hearth(
        &models,
        &[
            "run",
            "nano",
            "--raw",
            "-n",
            "6",
            "--temperature",
            "0",
            "Once upon a time",
        ],
    );
    assert_eq!(stdout(&again), out);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "nano", "--raw", "-n", "6", "--temperature", "0"])
        .env("HEARTH_MODELS", &models)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Once upon a time")
        .unwrap();
    let piped = child.wait_with_output().unwrap();
    assert_ok(&piped);
    assert_eq!(stdout(&piped), out);

    // Both cache types run; f32 is also what HEARTH_KV_CACHE_TYPE can choose.
    let o = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args([
            "run",
            "nano",
            "--raw",
            "-n",
            "6",
            "--temperature",
            "0",
            "Once",
        ])
        .env("HEARTH_MODELS", &models)
        .env("HEARTH_KV_CACHE_TYPE", "f32")
        .output()
        .unwrap();
    assert_ok(&o);

    // The chat path renders the nano model's ChatML template.
    assert_ok(&hearth(
        &models,
        &["run", "nano", "-n", "4", "--seed", "1", "Hi"],
    ));
}

#[test]
fn run_rejects_unknown_models_bad_flags_and_devices() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let o = hearth(&models, &["run", "nosuch", "hi"]);
    assert_error(&o, "model nosuch:latest not found");
    assert!(stderr(&o).contains("hearth list") && stderr(&o).contains("smollm2"));
    create_nano(&models, "nano", "");
    assert_error(
        &hearth(&models, &["run", "nano", "--top-p", "7", "hi"]),
        "--top-p 7",
    );
    assert_error(
        &hearth(&models, &["run", "nano", "--device", "tpu", "hi"]),
        "device \"tpu\"",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "nano", "hi"])
        .env("HEARTH_MODELS", &models)
        .env("HEARTH_DEVICE", "tpu")
        .output()
        .unwrap();
    assert_error(&o, "HEARTH_DEVICE");
    assert_error(&hearth(&models, &["run", "nano"]), "no prompt");
    assert_error(
        &hearth(&models, &["run", "nano", "--kv-cache-type", "q5_0", "hi"]),
        "use f16 (the default), f32, q8_0 or q4_0",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "nano", "hi"])
        .env("HEARTH_MODELS", &models)
        .env("HEARTH_KV_CACHE_TYPE", "f8")
        .output()
        .unwrap();
    assert_error(&o, "HEARTH_KV_CACHE_TYPE");
    assert_error(
        &hearth(&models, &["run", "nano", "--activations", "q4", "hi"]),
        "use q16 (the default), q8 or f32",
    );
    assert_error(
        &hearth(
            &models,
            &["run", "nano", "--activations", "q8", "--exact", "hi"],
        ),
        "cannot be used with",
    );
    let o = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["run", "nano", "hi"])
        .env("HEARTH_MODELS", &models)
        .env("HEARTH_ACTIVATIONS", "int8")
        .output()
        .unwrap();
    assert_error(&o, "HEARTH_ACTIVATIONS");
    for act in ["q8", "q16", "f32"] {
        let o = hearth(
            &models,
            &[
                "run",
                "nano",
                "--activations",
                act,
                "-n",
                "4",
                "--temperature",
                "0",
                "hi",
            ],
        );
        assert_ok(&o);
    }
}

#[test]
fn tokenize_prints_ids_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    create_nano(&models, "nano", "");
    let ids = |args: &[&str]| -> Vec<u32> {
        let o = hearth(&models, args);
        assert_ok(&o);
        serde_json::from_str(stdout(&o).trim()).unwrap()
    };
    let gguf = hearth::gguf::GgufFile::open(nano_gguf()).unwrap();
    let tokenizer = hearth::tokenizer::Tokenizer::from_gguf(&gguf).unwrap();
    let text = "hello world, the end";
    let plain = ids(&["tokenize", "nano", text]);
    assert_eq!(plain, tokenizer.encode(text, false).unwrap());
    assert!(!plain.is_empty());
    let with_bos = ids(&["tokenize", "nano", "--bos", text]);
    assert_eq!(with_bos[0], tokenizer.bos_id().unwrap());
    assert_eq!(&with_bos[1..], plain.as_slice());
    // Special-token text becomes the token: <|im_start|> is id 1 in the nano vocabulary.
    let special = ids(&["tokenize", "nano", "<|im_start|>user"]);
    assert_eq!(special[0], 1);
}

#[test]
fn bench_model_reports_speed_load_time_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let nano = nano_gguf();
    let o = hearth(
        dir.path(),
        &[
            "bench",
            "model",
            nano.to_str().unwrap(),
            "-p",
            "16",
            "-n",
            "4",
            "-r",
            "1",
            "--json",
        ],
    );
    assert_ok(&o);
    // llama-bench's `-o json`: an array with one object per test.
    let tests: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let tests = tests.as_array().unwrap();
    let shape: Vec<_> = tests
        .iter()
        .map(|t| {
            (
                t["n_prompt"].as_u64(),
                t["n_gen"].as_u64(),
                t["n_depth"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [(Some(16), Some(0), Some(0)), (Some(0), Some(4), Some(0))]
    );
    let r = &tests[0];
    for key in ["avg_ts", "avg_ns", "load_ms", "rss_after_test_mib"] {
        assert!(r[key].as_f64().unwrap() > 0.0, "{key} in {r}");
    }
    assert_eq!(r["samples_ts"].as_array().unwrap().len(), 1);
    assert!(r["n_threads"].as_u64().unwrap() >= 1);
    let per_token = r["weight_bytes_per_token"].as_u64().unwrap();
    assert!(per_token > 0 && per_token <= r["model_size"].as_u64().unwrap());
    assert_eq!(r["type_k"], "f16", "the default cache type");
    let device = r["device"].as_str().unwrap();
    // The default CPU path: 16-bit integer decode where the CPU has the kernels.
    assert!(
        device.contains("int16 activations") || device.contains("f32 activations"),
        "the default CPU path: {device}"
    );
    let o = hearth(
        dir.path(),
        &[
            "bench",
            "model",
            nano.to_str().unwrap(),
            "-p",
            "8",
            "-n",
            "2",
            "-r",
            "1",
            "-t",
            "1",
            "-d",
            "0,4",
            "--kv-cache-type",
            "f32",
            "--exact",
            "--json",
        ],
    );
    assert_ok(&o);
    let tests: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let r = &tests[0];
    assert_eq!(r["type_k"], "f32");
    let device = r["device"].as_str().unwrap();
    assert!(device.contains("exact f32"), "{device}");
    assert!(
        device.contains("1 threads"),
        "--threads reaches the backend: {device}"
    );
    let depths: Vec<_> = tests
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["n_depth"].as_u64().unwrap())
        .collect();
    assert_eq!(depths, [0, 0, 4, 4]);
    assert_error(
        &hearth(dir.path(), &["bench", "model", "nosuchmodel"]),
        "nosuchmodel",
    );
}

/// The GPU issue spells the bandwidth flag `--peak-gbs`; both spellings are accepted.
#[test]
fn bench_memory_reports_bandwidth() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench", "memory", "-t", "2", "--size", "8", "-r", "2", "--json",
    ];
    let o = hearth(dir.path(), &args);
    assert_ok(&o);
    let b: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(
        (b["n_threads"].as_u64(), b["bytes"].as_u64()),
        (Some(2), Some(8 << 20))
    );
    assert_eq!(b["samples_gbs"].as_array().unwrap().len(), 2);
    assert!(b["best_gbs"].as_f64().unwrap() >= b["avg_gbs"].as_f64().unwrap());
    assert!(b["avg_gbs"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_kernels_takes_peak_gbs_and_peak_gbps() {
    let dir = tempfile::tempdir().unwrap();
    let help = hearth(dir.path(), &["bench", "kernels", "--help"]);
    assert_ok(&help);
    let text = stdout(&help);
    assert!(
        text.contains("--peak-gbps") && text.contains("peak-gbs"),
        "{text}"
    );
}

/// `finetune` writes a LoRA GGUF (and prefix and bottleneck adapters) that `run --adapter`
/// applies; bad data, an unknown method and a missing adapter are clear errors.
#[test]
fn finetune_writes_an_adapter_that_run_applies() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    create_nano(&models, "nano", "");
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "a tiny text to learn, ".repeat(20)).unwrap();
    let out = dir.path().join("lora.gguf");
    let (text_s, out_s) = (text.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "finetune", "nano", "--data", text_s, "--out", out_s, "--rank", "2", "--ctx", "32",
    ];
    let o = hearth(&models, &args);
    assert_ok(&o);
    assert!(stderr(&o).contains("adapter written to"), "{}", stderr(&o));
    let f = hearth::gguf::GgufFile::open(&out).unwrap();
    assert_eq!(f.get_str("adapter.type").unwrap(), "lora");
    let run = |adapter: &str| {
        let args = [
            "run",
            "nano",
            "--raw",
            "-n",
            "4",
            "--temperature",
            "0",
            "--adapter",
            adapter,
            "hi",
        ];
        hearth(&models, &args)
    };
    assert_ok(&run(out_s));
    assert_ok(&run(&format!("{out_s}:0.5")));
    assert_error(&run("/nonexistent/lora.gguf"), "no such file");

    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "{\"messages\": []}\nnot json\n").unwrap();
    let o = hearth(
        &models,
        &[
            "finetune",
            "nano",
            "--data",
            bad.to_str().unwrap(),
            "--out",
            out_s,
        ],
    );
    assert_error(&o, "line 1");
    let o = hearth(
        &models,
        &[
            "finetune", "nano", "--data", text_s, "--out", out_s, "--method", "dora",
        ],
    );
    assert_error(&o, "lora, prefix or adapter");

    // Prefix tuning and bottleneck adapters: trained, saved with their type, applied by run.
    for (method, extra, ty) in [
        ("prefix", ["--virtual-tokens", "4"], "prefix"),
        ("adapter", ["--bottleneck", "8"], "bottleneck"),
    ] {
        let path = dir.path().join(format!("{method}.gguf"));
        let p = path.to_str().unwrap();
        let mut args = vec![
            "finetune", "nano", "--data", text_s, "--out", p, "--ctx", "32", "--method", method,
        ];
        args.extend(extra);
        let o = hearth(&models, &args);
        assert_ok(&o);
        let f = hearth::gguf::GgufFile::open(&path).unwrap();
        assert_eq!(f.get_str("adapter.type").unwrap(), ty);
        assert_ok(&run(p));
    }
    // The same training on the GPU backend (lavapipe here), where there is one.
    if hearth::backend::gpu::list_adapters().is_empty() {
        eprintln!("skipping finetune --device gpu: no GPU adapter");
    } else {
        // One short sequence: lavapipe runs every kernel on the CPU.
        let short = dir.path().join("short.txt");
        std::fs::write(&short, "a tiny text to learn").unwrap();
        let path = dir.path().join("gpu-lora.gguf");
        let p = path.to_str().unwrap();
        let args = [
            "finetune",
            "nano",
            "--data",
            short.to_str().unwrap(),
            "--out",
            p,
            "--rank",
            "2",
            "--device",
            "gpu",
        ];
        let o = hearth(&models, &args);
        assert_ok(&o);
        assert!(!stderr(&o).contains(", cpu ("), "{}", stderr(&o));
        assert_ok(&run(p));
    }
    let prefix = dir.path().join("prefix.gguf");
    let scaled = format!("{}:0.5", prefix.to_str().unwrap());
    assert_error(&run(&scaled), "takes no scale");

    // Modelfile ADAPTER: the adapters become layers of the model and apply when it runs,
    // as --adapter does; a file that is not an adapter is an error naming the line.
    let bottleneck = dir.path().join("adapter.gguf");
    let lines = format!(
        "ADAPTER {}\nADAPTER {}\n",
        out.display(),
        bottleneck.display()
    );
    create_nano(&models, "tuned", &lines);
    let greedy = |args: &[&str]| {
        let mut all = vec!["run", "--raw", "-n", "6", "--temperature", "0"];
        all.extend(args);
        let o = hearth(&models, &all);
        assert_ok(&o);
        stdout(&o)
    };
    let b = bottleneck.to_str().unwrap();
    assert_eq!(
        greedy(&["tuned", "hi"]),
        greedy(&["nano", "--adapter", out_s, "--adapter", b, "hi"])
    );
    let show = hearth(&models, &["show", "tuned", "--modelfile"]);
    assert_ok(&show);
    assert_eq!(
        stdout(&show).matches("ADAPTER ").count(),
        2,
        "{}",
        stdout(&show)
    );
    let mf = dir.path().join("bad.Modelfile");
    std::fs::write(&mf, format!("FROM nano\nADAPTER {}\n", text.display())).unwrap();
    let o = hearth(&models, &["create", "bad", "-f", mf.to_str().unwrap()]);
    assert_error(&o, "line 2: ADAPTER");

    // merge: the LoRA into the weights, quantized as asked; a prefix does not merge.
    let merged = dir.path().join("merged.gguf");
    let m = merged.to_str().unwrap();
    let o = hearth(
        &models,
        &["merge", "nano", out_s, "--out", m, "--quantize", "f16"],
    );
    assert_ok(&o);
    assert!(stdout(&o).contains("14 weights merged"), "{}", stdout(&o));
    let f = hearth::gguf::GgufFile::open(&merged).unwrap();
    let t = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!(t.qtype, hearth::quant::QuantType::F16);
    let p = prefix.to_str().unwrap();
    assert_error(
        &hearth(&models, &["merge", "nano", p, "--out", m]),
        "only LoRA",
    );
}

/// `finetune --out DIR` (or `--format peft`) writes a PEFT folder that `run --adapter DIR`
/// applies; `--format peft` for a prefix is a clear error.
#[test]
fn finetune_writes_a_peft_folder_that_run_applies() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    create_nano(&models, "nano", "");
    let text = dir.path().join("text.txt");
    std::fs::write(&text, "a tiny text to learn, ".repeat(20)).unwrap();
    let out = dir.path().join("lora-peft");
    let (text_s, out_s) = (text.to_str().unwrap(), out.to_str().unwrap());
    let args = [
        "finetune", "nano", "--data", text_s, "--out", out_s, "--rank", "2", "--ctx", "32",
    ];
    assert_ok(&hearth(&models, &args));
    assert!(out.join("adapter_model.safetensors").is_file());
    let config = std::fs::read_to_string(out.join("adapter_config.json")).unwrap();
    assert!(config.contains("\"peft_type\": \"LORA\""), "{config}");
    let args = [
        "run",
        "nano",
        "--raw",
        "-n",
        "4",
        "--temperature",
        "0",
        "--adapter",
        out_s,
        "hi",
    ];
    assert_ok(&hearth(&models, &args));
    let args = [
        "finetune", "nano", "--data", text_s, "--out", out_s, "--method", "prefix", "--format",
        "peft",
    ];
    assert_error(&hearth(&models, &args), "LoRA adapters only");
}
