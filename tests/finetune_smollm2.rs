//! Training demonstrably works on a real model (issue #11 part 7): SmolLM2 does not know a
//! made-up fact, `hearth finetune` on three chats teaches it (LoRA, CPU, the default path),
//! the held-out chat's validation loss falls, and `hearth run --adapter` then says the fact.

use std::path::Path;
use std::process::{Command, Output};

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
