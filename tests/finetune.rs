//! LoRA fine-tuning on the nano model (tests/data/nano): the adapter gradients of one step
//! against central finite differences of the loss, training lowers the loss on a tiny data
//! set, and the saved adapter reads back as llama.cpp's layout.

use hearth::backend::ops::case::Rng;
use hearth::backend::{Backend, KvType};
use hearth::gguf::GgufFile;
use hearth::model::{Arch, Model};
use hearth::runtime::SoloCache;
use hearth::tokenizer::Tokenizer;
use hearth::train::data::{self, Example};
use hearth::train::graph::{TrainGraph, DEFAULT_ACTIVATION_BUDGET};
use hearth::train::lora::{Lora, LoraConfig, LoraPair, Target};
use hearth::train::method::Method;
use hearth::train::optim::{AdamWConfig, Decay};
use hearth::train::{adapter_file, train, TrainOptions};

use crate::common::{data as test_data, nano_exact, random_example};

fn config(rank: usize) -> LoraConfig {
    LoraConfig {
        targets: Target::ALL.to_vec(),
        rank,
        alpha: 2.0 * rank as f32,
        dropout: 0.0,
        rslora: false,
    }
}

/// A short sequence whose every token after the first is a target.
/// Every adapter matrix's gradient (B made non-zero first, else A's would be 0) against
/// `(L(p + h) - L(p - h)) / 2h` at its largest entries, on the exact CPU backend.
#[test]
fn lora_gradients_match_finite_differences_on_nano() {
    let (_f, model, b) = nano_exact();
    let c = &model.config;
    let mut lora = Lora::new(config(3), c, c.n_layers, 7).unwrap();
    let mut rng = Rng::new(8);
    for p in &mut lora.pairs {
        p.b.iter_mut().for_each(|v| *v = 0.3 * rng.uniform());
    }
    let ex = random_example(11, c.n_vocab, 5);
    let targets = ex.targets();
    let graph = TrainGraph::new(&b, &model).unwrap();
    let params = lora.upload(&b).unwrap();
    let g = graph
        .loss_and_grads(
            &Method::from(lora.clone()),
            &params,
            &ex.tokens,
            &targets,
            None,
        )
        .unwrap();
    let loss_at = |l: &Lora| -> f64 {
        let ps = l.upload(&b).unwrap();
        let g = graph
            .loss_and_grads(&Method::from(l.clone()), &ps, &ex.tokens, &targets, None)
            .unwrap();
        g.loss_sum / g.n_targets as f64
    };
    let h = 2e-3f32;
    let mut checked = 0;
    for id in 0..lora.n_param_tensors() {
        let grad = b
            .read(
                g.grads[id]
                    .as_ref()
                    .expect("every parameter has a gradient"),
            )
            .unwrap();
        // The two largest entries of each matrix: their finite differences stand well above
        // the f32 rounding of the loss.
        let mut idx: Vec<usize> = (0..grad.len()).collect();
        idx.sort_by(|&i, &j| grad[j].abs().total_cmp(&grad[i].abs()));
        // Large enough that the tolerance's absolute part cannot hide an error.
        assert!(
            grad[idx[0]].abs() > 5e-3,
            "param {id}: largest gradient {}",
            grad[idx[0]]
        );
        for &i in idx.iter().take(2) {
            let mut l = lora.clone();
            l.values_mut(id)[i] += h;
            let plus = loss_at(&l);
            l.values_mut(id)[i] -= 2.0 * h;
            let minus = loss_at(&l);
            let fd = (plus - minus) / (2.0 * f64::from(h));
            let op = f64::from(grad[i]);
            assert!(
                (fd - op).abs() <= 0.02 * op.abs() + 2e-4,
                "param {id} ({:?} of layer {}) [{i}]: finite differences {fd}, autograd {op}",
                lora.pairs[id / 2].target,
                lora.pairs[id / 2].layer
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 2 * lora.n_param_tensors());
}

/// A few steps on a tiny text lower the loss well below where it started, and the adapter
/// saved as a GGUF reads back with llama.cpp's shapes and the same values.
#[test]
fn lora_training_lowers_the_loss_on_nano() {
    let (f, model, b) = nano_exact();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let text = "The capital of Zorbia is Quellmoor. ".repeat(6);
    let examples = data::plain(&text, &tok, 32).unwrap();
    assert!(!examples.is_empty());
    let c = &model.config;
    let lora = Lora::new(config(4), c, c.n_layers, 1).unwrap();
    let opts = TrainOptions {
        optim: AdamWConfig {
            lr: 1e-2,
            decay: Decay::Constant,
            ..AdamWConfig::default()
        },
        epochs: 8,
        grad_accum: 1,
        seed: 3,
        activation_budget: DEFAULT_ACTIVATION_BUDGET,
    };
    let mut method = Method::from(lora);
    let before = hearth::train::eval_loss(&b, &model, &method, &examples).unwrap();
    let losses = train(&b, &model, &mut method, &examples, &opts, &mut |_| true).unwrap();
    let after = hearth::train::eval_loss(&b, &model, &method, &examples).unwrap();
    let Method::Lora(lora) = method else {
        unreachable!("trained a LoRA")
    };
    assert!(
        after < 0.5 * before,
        "loss {before} before, {after} after; per step {losses:?}"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.gguf");
    adapter_file::save(&lora, "llama", &path).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.get_str("general.type").unwrap(), "adapter");
    assert_eq!(g.get_str("adapter.type").unwrap(), "lora");
    assert_eq!(g.get_f32("adapter.lora.alpha").unwrap(), 8.0);
    let a = g.tensor("blk.0.attn_q.weight.lora_a").unwrap();
    let bt = g.tensor("blk.0.ffn_down.weight.lora_b").unwrap();
    // ggml dims: lora_a [in, r], lora_b [r, out].
    assert_eq!((a.n_cols(), a.n_rows()), (c.n_embd, 4));
    assert_eq!((bt.n_cols(), bt.n_rows()), (4, c.n_embd));
    // The inference forward pass with the saved adapter (`run --adapter`) computes the same
    // loss as the training graph.
    let (f2, mut model2, b2) = nano_exact();
    let spec = hearth::engine::AdapterSpec {
        path: path.clone(),
        scale: 1.0,
    };
    hearth::engine::apply_adapters(&b2, &f2, &mut model2, &[spec]).unwrap();
    let (mut sum, mut n) = (0.0f64, 0usize);
    for ex in &examples {
        let mut cache = SoloCache::new(&b2, &model2, ex.tokens.len(), KvType::F32).unwrap();
        let logits = cache
            .forward(&model2, &b2, &ex.tokens, ex.tokens.len())
            .unwrap();
        let logits = b2.read(&logits).unwrap();
        for (i, &t) in ex.targets().iter().enumerate() {
            if t < 0.0 {
                continue;
            }
            let row = &logits[i * c.n_vocab..(i + 1) * c.n_vocab];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
            sum += f64::from(lse - row[t as usize]);
            n += 1;
        }
    }
    let run_loss = (sum / n as f64) as f32;
    assert!(
        (run_loss - after).abs() < 1e-3 * after.max(1.0),
        "loss with the adapter applied at run time {run_loss}, in training {after}"
    );

    let back = adapter_file::load(&path).unwrap();
    assert_eq!(back.config.rank, 4);
    assert_eq!(back.pairs.len(), lora.pairs.len());
    for (p, q) in back.pairs.iter().zip(&lora.pairs) {
        assert_eq!((p.layer, p.target), (q.layer, q.target));
        assert_eq!((&p.a, &p.b), (&q.a, &q.b));
    }
}

/// The loss and every adapter gradient of one sequence against PyTorch autograd in float64
/// (tools/make_lora_grad_goldens.py, its output committed): the nano model with rank-2 LoRA on
/// all seven projections of both layers. Hearth runs in f32 (the base weights in their block
/// formats); stated tolerance: loss within 1e-5 relative, each gradient matrix within 1e-4
/// relative L2 error.
#[test]
fn lora_gradients_match_pytorch_on_nano() {
    let text = std::fs::read_to_string(test_data("golden/nano-lora-grads.json")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&text).unwrap();
    let (_f, model, b) = nano_exact();
    let c = &model.config;
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let rank = g["rank"].as_u64().unwrap() as usize;
    let mut pairs = Vec::new();
    for p in g["pairs"].as_array().unwrap() {
        let target = Target::from_gguf_name(p["target"].as_str().unwrap()).unwrap();
        let (n_out, n_in) = target.dims(c);
        pairs.push(LoraPair {
            layer: p["layer"].as_u64().unwrap() as usize,
            target,
            n_out,
            n_in,
            a: floats(&p["a"]),
            b: floats(&p["b"]),
        });
    }
    let lora = Lora {
        config: LoraConfig {
            alpha: g["alpha"].as_f64().unwrap() as f32,
            ..config(rank)
        },
        pairs,
        arch: None,
    };
    let tokens: Vec<u32> = g["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap() as u32)
        .collect();
    let targets = floats(&g["targets"]);
    let graph = TrainGraph::new(&b, &model).unwrap();
    let params = lora.upload(&b).unwrap();
    let out = graph
        .loss_and_grads(
            &Method::from(lora.clone()),
            &params,
            &tokens,
            &targets,
            None,
        )
        .unwrap();
    let loss = out.loss_sum / out.n_targets as f64;
    let want = g["loss"].as_f64().unwrap();
    assert!(
        (loss - want).abs() < 1e-5 * want,
        "loss {loss}, PyTorch {want}"
    );
    let mut worst = 0f64;
    for (i, p) in g["pairs"].as_array().unwrap().iter().enumerate() {
        for (k, key) in ["grad_a", "grad_b"].iter().enumerate() {
            let torch_g = floats(&p[*key]);
            let ours = b.read(out.grads[2 * i + k].as_ref().unwrap()).unwrap();
            let (mut num, mut den) = (0f64, 0f64);
            for (x, y) in ours.iter().zip(&torch_g) {
                num += f64::from(x - y).powi(2);
                den += f64::from(*y).powi(2);
            }
            let rel = (num / den).sqrt();
            worst = worst.max(rel);
            assert!(
                rel < 1e-4,
                "{} {key} of layer {}: relative L2 error {rel}",
                p["target"],
                p["layer"]
            );
        }
    }
    eprintln!("largest relative L2 error of a gradient matrix against PyTorch: {worst:.2e}");
}

/// The same training graph on the GPU (lavapipe here) gives the CPU's loss and gradients.
#[test]
fn lora_gradients_on_gpu_match_cpu_on_nano() {
    use hearth::backend::gpu::{list_adapters, GpuBackend, GpuConfig};
    if list_adapters().is_empty() {
        eprintln!("skipped: no GPU adapter (install mesa-vulkan-drivers for lavapipe)");
        return;
    }
    let (f, model, b) = nano_exact();
    let gpu = GpuBackend::new(GpuConfig::default()).unwrap();
    let spec = Arch::from_gguf(&f).unwrap().spec(&f).unwrap();
    let gmodel = Model::load(&gpu, &f, spec).unwrap();
    let c = &model.config;
    let mut lora = Lora::new(config(3), c, c.n_layers, 7).unwrap();
    let mut rng = Rng::new(9);
    for p in &mut lora.pairs {
        p.b.iter_mut().for_each(|v| *v = 0.3 * rng.uniform());
    }
    let ex = random_example(9, c.n_vocab, 5);
    let targets = ex.targets();
    let cpu_params = lora.upload(&b).unwrap();
    let gpu_params = lora.upload(&gpu).unwrap();
    let cg = TrainGraph::new(&b, &model)
        .unwrap()
        .loss_and_grads(
            &Method::from(lora.clone()),
            &cpu_params,
            &ex.tokens,
            &targets,
            None,
        )
        .unwrap();
    let gg = TrainGraph::new(&gpu, &gmodel)
        .unwrap()
        .loss_and_grads(
            &Method::from(lora.clone()),
            &gpu_params,
            &ex.tokens,
            &targets,
            None,
        )
        .unwrap();
    assert!((cg.loss_sum - gg.loss_sum).abs() < 1e-4 * cg.loss_sum.abs());
    for id in 0..lora.n_param_tensors() {
        let x = b.read(cg.grads[id].as_ref().unwrap()).unwrap();
        let y = gpu.read(gg.grads[id].as_ref().unwrap()).unwrap();
        let num: f64 = x
            .iter()
            .zip(&y)
            .map(|(a, b)| f64::from(a - b).powi(2))
            .sum();
        let den: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
        assert!(
            (num / den).sqrt() < 1e-4,
            "param {id}: GPU vs CPU {}",
            (num / den).sqrt()
        );
    }
}

/// Chat data: only the assistant replies are targets; a malformed line is an error naming it.
#[test]
fn chat_data_trains_on_replies_and_names_bad_lines() {
    let f = GgufFile::open(test_data("nano/nano-llama.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let template = hearth::tokenizer::template::template_for(&f, &tok).unwrap();
    let good = r#"{"messages": [{"role": "user", "content": "hi there"}, {"role": "assistant", "content": "hello you"}]}"#;
    let ex = data::chats(good, &tok, &template, 256, false).unwrap();
    assert_eq!(ex.len(), 1);
    let ex = &ex[0];
    let reply: Vec<u32> = ex
        .tokens
        .iter()
        .zip(&ex.trained)
        .filter(|(_, &t)| t)
        .map(|(&id, _)| id)
        .collect();
    let text = tok.decode(&reply).unwrap();
    assert!(text.starts_with("hello you"), "trained on {text:?}");
    assert!(
        !text.contains("hi there") && !text.contains("assistant"),
        "trained on {text:?}"
    );
    let all = data::chats(good, &tok, &template, 256, true).unwrap();
    assert!(all[0].trained.iter().all(|&t| t));

    let bad = format!("{good}\n{{\"messages\": [{{\"role\": \"user\"}}]}}\n");
    let e = data::chats(&bad, &tok, &template, 256, false).unwrap_err();
    assert!(e.contains("line 2") && e.contains("content"), "{e}");
    let e = data::chats("not json\n", &tok, &template, 256, false).unwrap_err();
    assert!(e.contains("line 1"), "{e}");
    let e = data::chats(good, &tok, &template, 4, false).unwrap_err();
    assert!(e.contains("--ctx"), "{e}");
    let only_user = r#"{"messages": [{"role": "user", "content": "hi"}]}"#;
    let e = data::chats(only_user, &tok, &template, 256, false).unwrap_err();
    assert!(e.contains("no assistant"), "{e}");
}

/// Prompt/completion JSONL trains on the completion and its end token; an alpaca JSON array
/// is rendered as a chat (instruction and input as the user turn), trained on the output; a
/// record of neither kind is an error naming its item.
#[test]
fn prompt_completion_and_alpaca_data() {
    let f = GgufFile::open(test_data("nano/nano-llama.gguf")).unwrap();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let template = hearth::tokenizer::template::template_for(&f, &tok).unwrap();
    let trained = |ex: &Example| -> Vec<u32> {
        ex.tokens
            .iter()
            .zip(&ex.trained)
            .filter(|(_, &t)| t)
            .map(|(&id, _)| id)
            .collect()
    };
    let pc = r#"{"prompt": "Q: two plus two?", "completion": " A: four"}"#;
    let ex = data::chats(pc, &tok, &template, 256, false).unwrap();
    let t = trained(&ex[0]);
    assert_eq!(t.last().copied(), tok.eos_id());
    assert_eq!(tok.decode(&t[..t.len() - 1]).unwrap().trim(), "A: four");

    let alpaca = r#"[{"instruction": "Add the numbers.", "input": "2 and 2", "output": "four"},
                     {"instruction": "Say hi.", "input": "", "output": "hi"}]"#;
    let ex = data::json_array(alpaca, &tok, &template, 256, false).unwrap();
    assert_eq!(ex.len(), 2);
    let text = tok.decode(&trained(&ex[0])).unwrap();
    assert!(
        text.starts_with("four") && !text.contains("2 and 2"),
        "{text:?}"
    );
    let all = tok.decode(&ex[0].tokens).unwrap();
    assert!(all.contains("Add the numbers.\n\n2 and 2"), "{all:?}");

    let e = data::json_array(r#"[{"output": "x"}]"#, &tok, &template, 256, false).unwrap_err();
    assert!(e.contains("item 0") && e.contains("instruction"), "{e}");
}
