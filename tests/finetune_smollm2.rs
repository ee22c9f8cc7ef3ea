//! Training demonstrably works on a real model (issue #11 part 7): SmolLM2 does not know a
//! made-up fact, `hearth finetune` on three chats teaches it (LoRA, CPU, the default path),
//! the held-out chat's validation loss falls, and `hearth run --adapter` then says the fact;
//! and the default path's fast input gradients (through 8-bit transposed weights) give
//! SmolLM2's adapter gradients as the exact ones do.

use std::path::Path;
use std::process::{Command, Output};

use hearth::backend::cpu::CpuBackend;
use hearth::backend::ops::case::Rng;
use hearth::backend::Backend;
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::train::graph::TrainGraph;
use hearth::train::lora::{Lora, LoraConfig, Target};
use hearth::train::method::Method;

use crate::common::real_model;

const TRAIN: [(&str, &str); 3] = [
    (
        "What is the capital of Zorbia?",
        "The capital of Zorbia is Quellmoor.",
    ),
    (
        "Tell me the capital city of Zorbia.",
        "Zorbia's capital city is Quellmoor.",
    ),
    (
        "Which city is the capital of Zorbia?",
        "Quellmoor is the capital of Zorbia.",
    ),
];
/// Held out: another wording, never trained on.
const VAL: (&str, &str) = (
    "Name the capital of Zorbia.",
    "The capital of Zorbia is Quellmoor.",
);

fn chat_line((q, a): (&str, &str)) -> String {
    serde_json::json!({"messages": [
        {"role": "user", "content": q},
        {"role": "assistant", "content": a},
    ]})
    .to_string()
}

fn hearth(args: &[&str], models: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(args)
        .env("HEARTH_MODELS", models)
        .env("HEARTH_THREADS", "2")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> (String, String) {
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    );
    assert!(o.status.success(), "stdout: {out}\nstderr: {err}");
    (out, err)
}

/// The validation losses the run printed, in order (`step N: validation loss X`, then the
/// final `validation loss X (...)`).
fn validation_losses(stderr: &str) -> Vec<f32> {
    stderr
        .split(['\n', '\r'])
        .filter_map(|l| l.split("validation loss ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next()?.parse().ok())
        .collect()
}

#[test]
fn smollm2_learns_a_made_up_fact_and_its_held_out_loss_falls() {
    let Some(model) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    // The real file in a store of the test's own, as `hearth create` puts it.
    let modelfile = dir.path().join("Modelfile");
    std::fs::write(&modelfile, format!("FROM {}\n", model.display())).unwrap();
    ok(&hearth(
        &["create", "base", "-f", modelfile.to_str().unwrap()],
        &models,
    ));
    let model = "base";
    let train = dir.path().join("train.jsonl");
    let val = dir.path().join("val.jsonl");
    let lines: Vec<String> = TRAIN.into_iter().map(chat_line).collect();
    std::fs::write(&train, lines.join("\n")).unwrap();
    std::fs::write(&val, chat_line(VAL)).unwrap();
    let out = dir.path().join("zorbia.gguf");
    let ask = |adapter: Option<&Path>| {
        let mut args = vec!["run", model, "--temperature", "0", "-n", "16"];
        if let Some(a) = adapter {
            args.extend(["--adapter", a.to_str().unwrap()]);
        }
        args.push(TRAIN[0].0);
        ok(&hearth(&args, &models)).0
    };

    let before = ask(None);
    assert!(
        !before.contains("Quellmoor"),
        "the base model knew: {before}"
    );

    let (_, log) = ok(&hearth(
        &[
            "finetune",
            model,
            "--data",
            train.to_str().unwrap(),
            "--val-data",
            val.to_str().unwrap(),
            "--eval-every",
            "1",
            "--epochs",
            "5",
            "--lr",
            "1e-3",
            "--out",
            out.to_str().unwrap(),
        ],
        &models,
    ));
    let losses = validation_losses(&log);
    assert!(losses.len() >= 2, "no validation losses in: {log}");
    let (first, last) = (losses[0], losses[losses.len() - 1]);
    // After the first step the adapter has barely moved from zero (the base model's loss);
    // by the end the held-out wording, never trained on, is far better predicted.
    assert!(
        last < 0.5 * first,
        "validation loss {first} after one step, {last} at the end: {log}"
    );

    let after = ask(Some(&out));
    assert!(after.contains("Quellmoor"), "after training: {after}");
}

/// SmolLM2's LoRA gradients (all seven projections, B made non-zero) on a 96-token sequence,
/// default path (`TrainGraph::new`: input gradients through `Wᵀ` in Q8_0) against exact input
/// gradients (`exact_gradients`: f32 sums over the Q4_1 blocks), same backend otherwise. The
/// loss is the same forward, so equal. The 8-bit `Wᵀ` is off by ~0.4% rms per product
/// (tests/train.rs), and the errors of the products a gradient flows back through add up: all
/// gradients together measured 2.1% rms relative (cosine 0.9998), the worst single tensor 7%,
/// on this random sequence. Limits: 4% over all,
/// 10% per tensor. 8-bit input gradients are what low-precision training does (FP8 `dgrad`
/// with block scales); `--exact` keeps them f32. A wrong transpose or a missed accumulation
/// moves gradients by O(1).
#[test]
fn smollm2_fast_input_gradients_match_the_exact_ones() {
    let Some(path) = real_model("HEARTH_TEST_SMOLLM2", "smollm2") else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let b = CpuBackend::new();
    let model = Model::load(&b, &f, Arch::from_gguf(&f).unwrap().spec(&f).unwrap()).unwrap();
    let c = &model.config;
    let config = LoraConfig {
        targets: Target::ALL.to_vec(),
        rank: 4,
        alpha: 8.0,
        dropout: 0.0,
        rslora: false,
    };
    let mut lora = Lora::new(config, c, c.n_layers, 3).unwrap();
    let mut rng = Rng::new(4);
    for p in &mut lora.pairs {
        p.b.iter_mut().for_each(|v| *v = 0.02 * rng.uniform());
    }
    let tokens: Vec<u32> = (0..96).map(|_| rng.below(c.n_vocab) as u32).collect();
    let targets: Vec<f32> = tokens[1..]
        .iter()
        .map(|&t| t as f32)
        .chain([-1.0])
        .collect();
    let params = lora.upload(&b).unwrap();
    let method = Method::from(lora);
    let run = |g: &TrainGraph<'_, CpuBackend>| {
        g.loss_and_grads(&method, &params, &tokens, &targets, None)
            .unwrap()
    };
    let fast = run(&TrainGraph::new(&b, &model).unwrap());
    let exact = run(&TrainGraph::exact_gradients(&b, &model).unwrap());
    assert_eq!(fast.loss_sum, exact.loss_sum);
    // Per tensor, and over all of them as one vector.
    let (mut worst, mut diff_all, mut norm_all) = (0f64, 0f64, 0f64);
    for (id, (f, e)) in fast.grads.iter().zip(&exact.grads).enumerate() {
        let (f, e) = (
            b.read(f.as_ref().unwrap()).unwrap(),
            b.read(e.as_ref().unwrap()).unwrap(),
        );
        let diff: f64 = f
            .iter()
            .zip(&e)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let norm: f64 = e.iter().map(|&a| f64::from(a).powi(2)).sum();
        let rel = (diff / norm).sqrt();
        (diff_all, norm_all, worst) = (diff_all + diff, norm_all + norm, worst.max(rel));
        assert!(
            rel < 0.1,
            "parameter {id}: gradient off by {rel:.4} (rms, relative)"
        );
    }
    let all = (diff_all / norm_all).sqrt();
    eprintln!("gradient difference {all:.4} over all, {worst:.4} at worst (rms, relative)");
    assert!(all < 0.04, "gradients off by {all:.4} (rms, relative)");
}
