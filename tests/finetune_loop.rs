//! The training loop around the graph (issue #11, part 3) on the nano model: packed sequences
//! give the separate examples' losses and gradients, the validation split is the seed's,
//! checkpoints read back and refuse another run, and `hearth finetune` killed (SIGKILL) after
//! a checkpoint or stopped by Ctrl+C (SIGINT) resumes to the uninterrupted run's exact bytes.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use hearth::backend::ops::case::Rng;
use hearth::backend::TrainBackend;
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::tokenizer::template::template_for;
use hearth::tokenizer::Tokenizer;
use hearth::train::checkpoint::{Checkpoint, Fingerprint};
use hearth::train::data::{self, Example};
use hearth::train::graph::TrainGraph;
use hearth::train::lora::{Lora, LoraConfig, Target};
use hearth::train::method::Method;
use hearth::train::prefix::Prefix;

use crate::common::{data as test_data, nano_exact, random_example};

/// Random tokens, every one but the first trained on.
/// One packed sequence of three examples against the three run alone: the summed losses
/// agree and so do the gradients of the summed loss (`grad · n_targets`), for LoRA (B made
/// non-zero so every matrix has a gradient) and for a prefix (its rows before each example).
/// Tolerance: 1e-5 relative on the loss, 1e-4 of the largest entry on gradients; the exact
/// CPU backend computes each row alike whatever the row count, so only the order of the
/// summation over examples differs. If examples attended to one another the second and
/// third would see other keys and their losses would differ by far more.
#[test]
fn packed_sequences_give_the_separate_examples_losses_and_gradients() {
    let (_f, model, b) = nano_exact();
    check_packing(&b, &model, 1e-5, 1e-4);
}

/// The same on the GPU backend (lavapipe here), where the rows' positions go through the
/// device's RoPE; f32 sums in another order: 1e-4 on the loss, 1e-3 on gradients.
#[test]
fn packed_sequences_on_gpu_give_the_separate_examples_losses() {
    use hearth::backend::gpu::{list_adapters, GpuBackend, GpuConfig};
    if list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let (f, _, _) = nano_exact();
    let gpu = GpuBackend::new(GpuConfig::default()).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let model = Model::load(&gpu, &f, spec).unwrap();
    check_packing(&gpu, &model, 1e-4, 1e-3);
}

fn check_packing<B: TrainBackend>(b: &B, model: &Model<B>, loss_tol: f64, grad_tol: f64) {
    let c = &model.config;
    let lora_config = LoraConfig {
        targets: Target::ALL.to_vec(),
        rank: 2,
        alpha: 4.0,
        dropout: 0.0,
        rslora: false,
    };
    let mut lora = Lora::new(lora_config, c, c.n_layers, 3).unwrap();
    let mut rng = Rng::new(4);
    for p in &mut lora.pairs {
        p.b.iter_mut().for_each(|v| *v = 0.3 * rng.uniform());
    }
    let prefix = Prefix::random(c, 3, 5).unwrap();
    let exs = [
        random_example(7, c.n_vocab, 1),
        random_example(5, c.n_vocab, 2),
        random_example(9, c.n_vocab, 3),
    ];
    let packed = data::pack(&exs, 32);
    assert_eq!(packed.len(), 1);
    assert_eq!(packed[0].segments, vec![7, 5, 9]);
    // No example predicts the next one's first token.
    let t = packed[0].targets();
    assert!(t[6] < 0.0 && t[11] < 0.0 && t[20] < 0.0);
    assert_eq!(packed[0].n_targets(), 6 + 4 + 8);

    let graph = TrainGraph::new(b, model).unwrap();
    for method in [Method::from(lora), Method::from(prefix)] {
        let params = method.upload(b).unwrap();
        let n = method.n_param_tensors();
        let mut loss = 0.0;
        let mut grads: Vec<Vec<f64>> = vec![Vec::new(); n];
        for ex in &exs {
            let g = graph
                .loss_and_grads(&method, &params, &ex.tokens, &ex.targets(), None)
                .unwrap();
            loss += g.loss_sum;
            for (id, t) in g.grads.iter().enumerate() {
                let v = b.read(t.as_ref().unwrap()).unwrap();
                let acc = &mut grads[id];
                acc.resize(v.len(), 0.0);
                for (a, x) in acc.iter_mut().zip(v) {
                    *a += f64::from(x) * g.n_targets as f64;
                }
            }
        }
        let p = &packed[0];
        let g = graph
            .packed_loss_and_grads(&method, &params, &p.tokens, &p.targets(), None, &p.segments)
            .unwrap();
        assert!(
            (g.loss_sum - loss).abs() <= loss_tol * loss.abs(),
            "packed loss {} against {loss} separately",
            g.loss_sum
        );
        for (id, t) in g.grads.iter().enumerate() {
            let v = b.read(t.as_ref().unwrap()).unwrap();
            let want = &grads[id];
            let scale = want.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(scale > 0.0, "param {id} has no gradient");
            for (i, (&x, &w)) in v.iter().zip(want).enumerate() {
                let got = f64::from(x) * g.n_targets as f64;
                assert!(
                    (got - w).abs() <= grad_tol * scale,
                    "param {id}[{i}]: packed {got}, separately {w}"
                );
            }
        }
    }
}

/// Packing keeps examples whole and within `ctx`, in their order.
#[test]
fn pack_fills_sequences_up_to_ctx() {
    let exs: Vec<Example> = [4, 5, 3, 9, 2]
        .iter()
        .map(|&n| random_example(n, 50, n as u64))
        .collect();
    let packed = data::pack(&exs, 10);
    let segs: Vec<Vec<usize>> = packed.iter().map(|p| p.segments.clone()).collect();
    assert_eq!(segs, vec![vec![4, 5], vec![3], vec![9], vec![2]]);
    let tokens: Vec<u32> = packed.iter().flat_map(|p| p.tokens.clone()).collect();
    let want: Vec<u32> = exs.iter().flat_map(|e| e.tokens.clone()).collect();
    assert_eq!(tokens, want);
}

/// The validation split takes `round(f · n)` examples chosen by the seed, the same ones for
/// the same seed, and leaves the rest in order; fractions outside [0, 1) and splits that
/// leave nothing to train on are errors.
#[test]
fn validation_split_is_the_seeds() {
    let exs: Vec<Example> = (0..20).map(|i| random_example(3, 50, i)).collect();
    let (train, val) = data::split(exs.clone(), 0.25, 7).unwrap();
    assert_eq!((train.len(), val.len()), (15, 5));
    let (train2, val2) = data::split(exs.clone(), 0.25, 7).unwrap();
    assert_eq!((&train, &val), (&train2, &val2));
    let (_, val3) = data::split(exs.clone(), 0.25, 8).unwrap();
    assert_ne!(val, val3, "another seed holds out other examples");
    // Training examples keep their order.
    let pos: Vec<usize> = train
        .iter()
        .map(|t| exs.iter().position(|e| e == t).unwrap())
        .collect();
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "{pos:?}");
    assert_eq!(data::split(exs.clone(), 0.0, 7).unwrap().1.len(), 0);
    assert_eq!(data::split(exs.clone(), 0.01, 7).unwrap().1.len(), 1);
    let e = data::split(exs.clone(), 1.0, 7).unwrap_err().to_string();
    assert!(e.contains("[0, 1)"), "{e}");
    let e = data::split(exs[..1].to_vec(), 0.5, 7)
        .unwrap_err()
        .to_string();
    assert!(e.contains("none to train on"), "{e}");
}

/// Empty data files are an error naming the file, not a run of nothing.
#[test]
fn empty_data_is_an_error() {
    let f = GgufFile::open(test_data("nano/nano-llama.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let template = template_for(&f, &tok).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [("e.jsonl", "\n\n"), ("e.txt", ""), ("e.json", "[]")] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let e = data::load(&p, &tok, &template, 64, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(name) && e.contains("no training examples"),
            "{e}"
        );
    }
}

/// A checkpoint reads back as written; another run's fingerprint is refused naming what
/// differs; a file that is not a checkpoint is a clear error.
#[test]
fn checkpoints_round_trip_and_refuse_another_run() {
    let fp = Fingerprint {
        model: 1,
        data: 2,
        options: 3,
    };
    let ck = Checkpoint {
        fingerprint: fp,
        step: 7,
        epoch: 1,
        chunk: 2,
        rng: u64::MAX - 5,
        order: vec![2, 0, 1],
        values: vec![vec![0.5, -1.25], vec![3.0]],
        adam_t: 7,
        adam_m: vec![vec![1e-3, 2e-3], vec![-4e-3]],
        adam_v: vec![vec![1e-6, 2e-6], vec![3e-6]],
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("run.ckpt");
    ck.save(&path).unwrap();
    let back = Checkpoint::load(&path).unwrap();
    assert_eq!(back, ck);
    back.check(&fp).unwrap();
    for (other, what) in [
        (Fingerprint { model: 9, ..fp }, "base model"),
        (Fingerprint { data: 9, ..fp }, "training data"),
        (Fingerprint { options: 9, ..fp }, "training options"),
    ] {
        let e = back.check(&other).unwrap_err().to_string();
        assert!(e.contains(what) && e.contains("without --resume"), "{e}");
    }
    std::fs::write(&path, b"not a checkpoint").unwrap();
    let e = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(e.contains("not a usable training checkpoint"), "{e}");
}

fn hearth() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
    c.env_remove("HEARTH_DEVICE");
    c
}

/// A run long enough for signals to land mid-way (120 steps, two epochs, so a resume crosses
/// into an epoch whose order it draws itself), one thread so every run does its arithmetic
/// in the same order.
fn finetune_args(dir: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let text = dir.join("text.txt");
    if !text.exists() {
        let words = ["tiny", "text", "to", "learn", "by", "heart", "again"];
        let mut rng = Rng::new(11);
        let body: Vec<&str> = (0..600).map(|_| words[rng.below(words.len())]).collect();
        std::fs::write(&text, body.join(" ")).unwrap();
    }
    let nano = test_data("nano/nano-llama.gguf");
    let mut args: Vec<String> = [
        "finetune",
        nano.to_str().unwrap(),
        "--data",
        text.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--rank",
        "2",
        "--ctx",
        "16",
        "--epochs",
        "2",
        "--dropout",
        "0.1",
        "--grad-accum",
        "2",
        "--seed",
        "5",
        "--threads",
        "1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn run(args: &[String]) -> Output {
    hearth().args(args).output().unwrap()
}

fn assert_ok(o: &Output) {
    assert!(
        o.status.success(),
        "status {}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Spawns a run with stderr piped, returning it and a receiver of its stderr lines.
fn spawn(args: &[String]) -> (Child, std::sync::mpsc::Receiver<String>) {
    let mut child = hearth()
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits for a line of `rx` starting with `prefix`, failing after 60 s or at the stream's end.
fn wait_for_line(rx: &std::sync::mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line starting {prefix:?}: {e}"),
        }
    }
}

fn step_of(line: &str) -> (usize, usize) {
    let s = line.split_whitespace().nth(1).unwrap();
    let (a, b) = s.split_once('/').unwrap();
    (a.parse().unwrap(), b.parse().unwrap())
}

/// Issue #11: a run SIGKILLed after a checkpoint and resumed writes the same adapter bytes as
/// the uninterrupted run of the same seed (dropout and gradient accumulation on, so the
/// generator state and the order position must come back too). A resume with other options
/// is refused before training.
#[test]
fn issue_11_a_killed_finetune_resumes_to_the_same_adapter_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let whole = dir.path().join("whole.gguf");
    let o = run(&finetune_args(dir.path(), &whole, &[]));
    assert_ok(&o);
    assert!(!PathBuf::from(format!("{}.ckpt", whole.display())).exists());

    let out = dir.path().join("resumed.gguf");
    let ckpt = dir.path().join("resumed.gguf.ckpt");
    let args = finetune_args(dir.path(), &out, &["--checkpoint-every", "7"]);
    let (mut child, rx) = spawn(&args);
    // The step after the second checkpoint: the kill lands past a checkpoint, mid-run.
    let line = wait_for_line(&rx, "step 15/");
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let (_, total) = step_of(&line);
    assert!(total > 30, "the run has {total} steps");
    assert!(!out.exists(), "the killed run wrote its adapter");
    let ck = Checkpoint::load(&ckpt).unwrap();
    assert!(
        ck.step >= 14 && ck.step.is_multiple_of(7) && ck.step < total,
        "checkpoint at step {} of {total}",
        ck.step
    );

    let other = finetune_args(dir.path(), &out, &["--resume", "--lr", "1e-3"]);
    let o = run(&other);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("different training options"), "{e}");

    let mut again = args.clone();
    again.push("--resume".into());
    let o = run(&again);
    assert_ok(&o);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains(&format!("steps {}..", ck.step + 1)), "{e}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(&whole).unwrap(),
        "the resumed run's adapter differs from the uninterrupted run's"
    );
    assert!(!ckpt.exists(), "a completed run removes its checkpoint");
}

/// Ctrl+C (SIGINT) stops after the current step and leaves a checkpoint that loads; resuming
/// it finishes the run with the uninterrupted run's bytes.
#[test]
fn issue_11_ctrl_c_leaves_a_checkpoint_that_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("a.gguf");
    let args = finetune_args(dir.path(), &out, &[]);
    let (mut child, rx) = spawn(&args);
    let line = wait_for_line(&rx, "step 3/");
    // SAFETY: signalling a child this test started and has not yet reaped.
    let r = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    assert_eq!(r, 0);
    let status = child.wait().unwrap();
    assert!(status.success(), "status {status}");
    let rest: Vec<String> = rx.iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("--resume")),
        "no resume hint in {rest:?}"
    );
    let (_, total) = step_of(&line);
    let ck = Checkpoint::load(Path::new(&format!("{}.ckpt", out.display()))).unwrap();
    assert!(
        ck.step >= 3 && ck.step < total,
        "checkpoint at step {}",
        ck.step
    );

    let mut again = args.clone();
    again.push("--resume".into());
    assert_ok(&run(&again));
    let whole = dir.path().join("whole.gguf");
    assert_ok(&run(&finetune_args(dir.path(), &whole, &[])));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&whole).unwrap());
}

/// `--val-split` holds out examples and reports their loss every `--eval-every` steps and at
/// the end; `--pack` trains on packed sequences; `--resume` without a checkpoint says so.
#[test]
fn finetune_reports_validation_loss_and_packs() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("chats.jsonl");
    let line = |i: usize| {
        format!(
            "{{\"messages\": [{{\"role\": \"user\", \"content\": \"question {i}\"}}, \
             {{\"role\": \"assistant\", \"content\": \"answer {i}\"}}]}}"
        )
    };
    let lines: Vec<String> = (0..10).map(line).collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let out = dir.path().join("v.gguf");
    let nano = test_data("nano/nano-llama.gguf");
    let base = [
        "finetune",
        nano.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--rank",
        "2",
        "--ctx",
        "128",
        "--threads",
        "1",
    ];
    let with = |extra: &[&str]| -> Output {
        let mut a: Vec<&str> = base.to_vec();
        a.extend(extra);
        hearth().args(&a).output().unwrap()
    };
    let o = with(&["--val-split", "0.2", "--eval-every", "4", "--epochs", "2"]);
    assert_ok(&o);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("2 held out for validation"), "{e}");
    assert!(e.contains("step 4: validation loss"), "{e}");
    assert!(
        e.contains("validation loss") && e.contains("(2 examples)"),
        "{e}"
    );
    assert!(e.contains("ETA"), "{e}");

    let o = with(&["--pack"]);
    assert_ok(&o);
    let e = String::from_utf8_lossy(&o.stderr);
    let n_seqs: usize = e
        .split("packed into ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no packing line in {e}"));
    assert!(n_seqs < 10, "10 short chats packed into {n_seqs} sequences");
    assert!(e.contains(&format!("step {n_seqs}/{n_seqs}")), "{e}");

    let o = with(&["--resume", "--checkpoint", "/nonexistent/x.ckpt"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("no checkpoint at /nonexistent/x.ckpt"), "{e}");
    let o = with(&["--val-split", "0.2", "--val-data", data.to_str().unwrap()]);
    assert!(!o.status.success());
}
