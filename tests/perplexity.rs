//! `hearth::perplexity` on the nano model: the logits it scores are the model's (the last row
//! equals transformers' golden logits, every row equals a separate forward pass up to that
//! position), and PPL, its standard error and the KL figures equal a computation written out
//! here from all logits of each chunk.

use hearth::backend::cpu::CpuBackend;
use hearth::backend::KvType;
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::perplexity::{self, TokenScore};
use serde_json::Value;

use crate::common::data;

fn load(path: &std::path::Path) -> (CpuBackend, Model<CpuBackend>) {
    let backend = CpuBackend::exact();
    let f = GgufFile::open(path).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let model = Model::load(&backend, &f, spec).unwrap();
    (backend, model)
}

fn golden_case(name: &str) -> (Vec<u32>, Vec<f32>) {
    let g: Value =
        serde_json::from_str(&std::fs::read_to_string(data("golden/nano-llama.json")).unwrap())
            .unwrap();
    let case = g["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap();
    let ids = case["prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let logits = case["last_logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect();
    (ids, logits)
}

/// All rows `chunk_logits` returns are the model's logits at their positions: the last equals
/// transformers' (tolerance 2e-4 as in tests/model.rs), and rows inside equal the last row of
/// a forward pass over the prefix (causality: 1e-4, summation order only).
#[test]
fn chunk_logits_rows_are_the_models_logits() {
    let (ids, want) = golden_case("long");
    let (backend, model) = load(&data("nano/nano-llama.gguf"));
    let n_vocab = model.config.n_vocab;
    let all = perplexity::chunk_logits(&backend, &model, &ids, ids.len(), KvType::F32).unwrap();
    assert_eq!(all.len(), ids.len() * n_vocab);
    let last = &all[(ids.len() - 1) * n_vocab..];
    for (a, b) in last.iter().zip(&want) {
        assert!((a - b).abs() <= 2e-4, "{a} vs transformers {b}");
    }
    for pos in [0usize, 17, 86, 150] {
        let prefix =
            perplexity::chunk_logits(&backend, &model, &ids[..=pos], 1, KvType::F32).unwrap();
        let row = &all[pos * n_vocab..(pos + 1) * n_vocab];
        for (a, b) in row.iter().zip(&prefix) {
            assert!((a - b).abs() <= 1e-4, "position {pos}: {a} vs {b}");
        }
    }
}

#[test]
fn chunks_follow_llama_perplexity() {
    let ids: Vec<u32> = (0..1000).collect();
    let c = perplexity::chunks(&ids, 256, None, None).unwrap();
    assert_eq!(c.len(), 3, "the partial last chunk is dropped");
    assert_eq!(c[1].ids, (256..512).collect::<Vec<u32>>());
    assert_eq!(
        c[1].n_scored, 127,
        "the second half predicts its next tokens"
    );
    let c = perplexity::chunks(&ids, 256, Some(2), Some(7)).unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(
        (c[0].ids[0], c[0].ids[1], c[1].ids[0], c[1].ids[1]),
        (7, 1, 7, 257),
        "BOS replaces each first token"
    );
    assert_eq!(c[0].n_logit_rows(), 128);
    let e = perplexity::chunks(&ids, 2000, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("fewer than one chunk"), "{e}");
    assert!(perplexity::chunks(&ids, 2, None, None).is_err());
}

/// Strided windows end `stride` apart from the first scored token whatever the context, so
/// two contexts score the same tokens; each holds up to `n_ctx` tokens before its end.
#[test]
fn strided_windows_score_the_same_tokens_at_any_context() {
    let ids: Vec<u32> = (0..1000).collect();
    let scored = |w: &[perplexity::Window]| -> Vec<u32> {
        w.iter()
            .flat_map(|w| w.ids[w.ids.len() - w.n_scored..].to_vec())
            .collect()
    };
    let small = perplexity::strided(&ids, 64, 16, Some(300), None, None).unwrap();
    let large = perplexity::strided(&ids, 512, 16, Some(300), None, None).unwrap();
    assert_eq!(small.len(), 43, "(1000 - 300) / 16 whole windows");
    assert_eq!(scored(&small), (300..988).collect::<Vec<u32>>());
    assert_eq!(scored(&small), scored(&large));
    assert_eq!(small[0].ids, (252..316).collect::<Vec<u32>>());
    assert_eq!(
        large[0].ids,
        (0..316).collect::<Vec<u32>>(),
        "clipped at the text's start"
    );
    let w = perplexity::strided(&ids, 64, 16, None, Some(2), Some(7)).unwrap();
    assert_eq!(
        (w.len(), w[0].ids.len(), w[0].ids[0], w[1].ids[1]),
        (2, 64, 7, 17)
    );
    for bad in [
        perplexity::strided(&ids, 64, 64, None, None, None),
        perplexity::strided(&ids, 64, 0, None, None, None),
        perplexity::strided(&ids, 64, 16, Some(0), None, None),
        perplexity::strided(&ids, 64, 16, Some(990), None, None),
    ] {
        assert!(bad.is_err());
    }
}

/// With a context longer than the text, every strided window starts at token 0, so its scores
/// are those of one causal pass over the whole text at the scored positions.
#[test]
fn strided_scores_match_one_whole_pass() {
    let (backend, model) = load(&data("nano/nano-llama.gguf"));
    let n_vocab = model.config.n_vocab;
    let ids: Vec<u32> = (0..200u32)
        .map(|i| (i * 7919 + 13) % n_vocab as u32)
        .collect();
    let windows = perplexity::strided(&ids, 256, 30, Some(50), None, None).unwrap();
    let got = perplexity::evaluate(
        &backend,
        &model,
        None,
        &windows,
        (KvType::F32, KvType::F32),
        |_, _, _| {},
    )
    .unwrap();
    let all = perplexity::chunk_logits(&backend, &model, &ids, ids.len(), KvType::F32).unwrap();
    let nll: Vec<f64> = (49..199)
        .map(|pos| {
            let row = &all[pos * n_vocab..(pos + 1) * n_vocab];
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            m + z.ln() - row[ids[pos + 1] as usize] as f64
        })
        .collect();
    assert_eq!(got.n_tokens, 150);
    let want = (nll.iter().sum::<f64>() / 150.0).exp();
    // The windows and the whole pass run different batch shapes through the same f32 kernels:
    // only float summation order differs.
    assert!(
        (got.ppl - want).abs() < 1e-4 * want,
        "{} vs {want}",
        got.ppl
    );
}

/// PPL, its standard error and the KL figures from `evaluate` against the same quantities
/// written out here in f64 from every logit of every chunk.
#[test]
fn evaluate_matches_a_hand_computation() {
    let (backend, model) = load(&data("nano/nano-llama.gguf"));
    // The base: the same model quantized to Q4_0 (a different distribution, same vocabulary).
    let dir = tempfile::tempdir().unwrap();
    let q = dir.path().join("q4_0.gguf");
    hearth::quantize::quantize_file(
        &data("nano/nano-llama.gguf"),
        &q,
        hearth::quantize::Target::Q4_0,
        |_| {},
    )
    .unwrap();
    let (_, base) = load(&q);
    let n_vocab = model.config.n_vocab;
    let ids: Vec<u32> = (0..300u32)
        .map(|i| (i * 7919 + 13) % n_vocab as u32)
        .collect();
    let n_ctx = 64;
    let chunks = perplexity::chunks(&ids, n_ctx, None, Some(1)).unwrap();
    assert_eq!(chunks.len(), 4);
    let mut calls = 0;
    let got = perplexity::evaluate(
        &backend,
        &model,
        Some(&base),
        &chunks,
        (KvType::F32, KvType::F32),
        |d, n, _| {
            calls += 1;
            assert!(d <= n);
        },
    )
    .unwrap();
    assert_eq!(calls, 4);

    let (mut nlls, mut kls, mut agree) = (Vec::new(), Vec::new(), 0usize);
    let softmax_log = |row: &[f32]| -> Vec<f64> {
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        row.iter().map(|&v| v as f64 - m - z.ln()).collect()
    };
    let top = |row: &[f64]| (0..row.len()).fold(0, |b, i| if row[i] > row[b] { i } else { b });
    for chunk in &chunks {
        let chunk = &chunk.ids;
        let all = perplexity::chunk_logits(&backend, &model, chunk, n_ctx, KvType::F32).unwrap();
        let all_b = perplexity::chunk_logits(&backend, &base, chunk, n_ctx, KvType::F32).unwrap();
        for pos in n_ctx / 2..n_ctx - 1 {
            let lp = softmax_log(&all[pos * n_vocab..(pos + 1) * n_vocab]);
            let lb = softmax_log(&all_b[pos * n_vocab..(pos + 1) * n_vocab]);
            nlls.push(-lp[chunk[pos + 1] as usize]);
            kls.push(
                lb.iter()
                    .zip(&lp)
                    .map(|(b, p)| b.exp() * (b - p))
                    .sum::<f64>(),
            );
            agree += (top(&lp) == top(&lb)) as usize;
        }
    }
    let n = nlls.len() as f64;
    assert_eq!(got.n_tokens, 4 * 31);
    let mean = nlls.iter().sum::<f64>() / n;
    let var = nlls.iter().map(|x| x * x).sum::<f64>() / n - mean * mean;
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 1e-9 * b.abs().max(1.0),
            "{what}: {a} vs {b}"
        )
    };
    close(got.ppl, mean.exp(), "ppl");
    close(
        got.ppl_stderr,
        mean.exp() * (var / (n - 1.0)).sqrt(),
        "stderr",
    );
    let kl = got.kl.unwrap();
    close(kl.kld_mean, kls.iter().sum::<f64>() / n, "kld_mean");
    kls.sort_by(|a, b| a.total_cmp(b));
    // llama-perplexity's percentile: interpolated at 0.99·(n−1).
    let (i, w) = ((0.99 * (n - 1.0)) as usize, (0.99 * (n - 1.0)).fract());
    close(kl.kld_p99, (1.0 - w) * kls[i] + w * kls[i + 1], "kld_p99");
    close(kl.top1_agreement, agree as f64 / n, "top1");
    assert!(kl.kld_mean > 0.0 && kl.top1_agreement < 1.0);
}

#[test]
fn a_model_against_itself_has_zero_divergence() {
    let (backend, model) = load(&data("nano/nano-llama.gguf"));
    let ids: Vec<u32> = (0..128u32).map(|i| (i * 31 + 2) % 379).collect();
    let chunks = perplexity::chunks(&ids, 64, None, None).unwrap();
    let r = perplexity::evaluate(
        &backend,
        &model,
        Some(&model),
        &chunks,
        (KvType::F32, KvType::F32),
        |_, _, _| {},
    )
    .unwrap();
    let kl = r.kl.unwrap();
    assert!(
        kl.kld_mean.abs() < 1e-12 && kl.kld_p99.abs() < 1e-12,
        "{kl:?}"
    );
    assert_eq!(kl.top1_agreement, 1.0);
}

/// A distribution that puts all mass on the target scores NLL 0; uniform logits score ln V.
#[test]
fn score_chunk_on_known_rows() {
    let n_vocab = 4;
    let chunk = perplexity::Window {
        ids: vec![0, 1, 2, 3],
        n_scored: 1,
    };
    // Rows for positions 2 and 3; position 2 predicts token 3.
    let logits = [0.0f32, 0.0, 0.0, 1000.0, 0.0, 0.0, 0.0, 0.0];
    let s = perplexity::score_window(&chunk, &logits, None, n_vocab);
    assert_eq!(s, vec![TokenScore { nll: 0.0, kl: None }]);
    let uniform = [0.0f32; 8];
    let s = perplexity::score_window(&chunk, &uniform, None, n_vocab);
    assert!((s[0].nll - 4f64.ln()).abs() < 1e-12);
}

/// The verb end to end: `--json` carries the documented keys (and the KL ones with
/// `--kl-base`), and bad input is one clear `Error:` line with exit status 1.
#[test]
fn perplexity_cli_json_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let nano = data("nano/nano-llama.gguf");
    let nano = nano.to_str().unwrap();
    let text_path = dir.path().join("text.txt");
    let text: String = (0..200)
        .map(|i| format!("The {i}th line of a plain English text about rivers. "))
        .collect();
    std::fs::write(&text_path, text).unwrap();
    let text_path = text_path.to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hearth"))
            .args(args)
            .env("HEARTH_MODELS", &models)
            .output()
            .unwrap()
    };
    let o = run(&[
        "perplexity",
        nano,
        text_path,
        "--ctx",
        "64",
        "--chunks",
        "3",
        "--json",
        "--kl-base",
        nano,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n_chunks"], 3);
    assert_eq!(v["n_scored_tokens"], 3 * 31);
    assert!(v["ppl"].as_f64().unwrap() > 1.0 && v["ppl_stderr"].as_f64().unwrap() > 0.0);
    assert_eq!(v["kld_mean"].as_f64(), Some(0.0));
    assert_eq!(v["top1_agreement"].as_f64(), Some(1.0));
    assert!(v["kld_p99"].is_number());
    // The same chunks on the GPU (lavapipe in CI) and on the CPU in f32: the same
    // perplexity up to float rounding.
    let ppl_on = |device: &[&str]| {
        let mut args = vec![
            "perplexity",
            nano,
            text_path,
            "--ctx",
            "64",
            "--chunks",
            "3",
        ];
        args.push("--json");
        args.extend_from_slice(device);
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        let v: Option<Value> = serde_json::from_slice(&o.stdout).ok();
        (o.status.success(), v, err)
    };
    let (ok, cpu, err) = ppl_on(&["--device", "cpu", "--exact"]);
    assert!(ok, "{err}");
    let cpu = cpu.unwrap();
    assert_eq!(cpu["device"], "cpu");
    match ppl_on(&["--device", "gpu"]) {
        (true, Some(gpu), _) => {
            assert_eq!(gpu["device"], "gpu");
            let (g, c) = (gpu["ppl"].as_f64().unwrap(), cpu["ppl"].as_f64().unwrap());
            assert!((g / c - 1.0).abs() < 1e-3, "GPU {g} vs CPU {c}");
        }
        (_, _, err) if err.contains("no GPU adapter found") => {
            eprintln!("skipped the GPU run: {err}")
        }
        (_, _, err) => panic!("perplexity --device gpu failed: {err}"),
    }
    for (args, want) in [
        (
            vec!["perplexity", nano, text_path, "--ctx", "100000"],
            "fewer than one chunk",
        ),
        (
            vec!["perplexity", nano, "/nonexistent.txt"],
            "cannot read the text file",
        ),
        (
            vec!["perplexity", "/nonexistent.gguf", text_path],
            "nonexistent.gguf",
        ),
    ] {
        let o = run(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("Error: ") && err.contains(want),
            "{args:?}: {err}"
        );
    }
}
