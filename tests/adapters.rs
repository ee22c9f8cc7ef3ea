//! Prefix tuning and bottleneck adapters on the nano model (tests/data/nano): every
//! parameter's gradient against central finite differences of the loss, training lowers the
//! loss, and the saved file applied at run time (`run --adapter`) gives the training graph's
//! loss, through a solo cache and through the runtime's paged cache.

use hearth::backend::cpu::CpuBackend;
use hearth::backend::ops::case::Rng;
use hearth::backend::{Backend, KvType};
use hearth::model::{Arch, Model};
use hearth::runtime::SoloCache;
use hearth::tokenizer::Tokenizer;
use hearth::train::bottleneck::{Bottleneck, Placement};
use hearth::train::data::{self, Example};
use hearth::train::graph::{TrainGraph, DEFAULT_ACTIVATION_BUDGET};
use hearth::train::lora::{Lora, LoraConfig, Target};
use hearth::train::method::Method;
use hearth::train::optim::{AdamWConfig, Decay};
use hearth::train::prefix::Prefix;
use hearth::train::{adapter_file, eval_loss, train, TrainOptions};

use crate::common::{nano_exact, random_example};

/// Each parameter tensor's two largest gradient entries against `(L(p + h) - L(p - h)) / 2h`
/// on the exact CPU backend (f32 throughout; stated tolerance 2% + 2e-4).
fn check_gradients(method: &Method) {
    let (_f, model, b) = nano_exact();
    let ex = random_example(11, model.config.n_vocab, 5);
    let targets = ex.targets();
    let graph = TrainGraph::new(&b, &model).unwrap();
    let loss_at = |m: &Method| -> (f64, Vec<Option<Vec<f32>>>) {
        let ps = m.upload(&b).unwrap();
        let g = graph
            .loss_and_grads(m, &ps, &ex.tokens, &targets, None)
            .unwrap();
        let grads = g
            .grads
            .iter()
            .map(|t| t.as_ref().map(|t| b.read(t).unwrap()))
            .collect();
        (g.loss_sum / g.n_targets as f64, grads)
    };
    let (_, grads) = loss_at(method);
    let h = 2e-3f32;
    for (id, grad) in grads.iter().enumerate() {
        let grad = grad.as_ref().expect("every parameter has a gradient");
        let mut idx: Vec<usize> = (0..grad.len()).collect();
        idx.sort_by(|&i, &j| grad[j].abs().total_cmp(&grad[i].abs()));
        assert!(
            grad[idx[0]].abs() > 5e-3,
            "param {id}: largest gradient {}",
            grad[idx[0]]
        );
        for &i in idx.iter().take(2) {
            let mut m = method.clone();
            m.values_mut(id)[i] += h;
            let plus = loss_at(&m).0;
            m.values_mut(id)[i] -= 2.0 * h;
            let minus = loss_at(&m).0;
            let fd = (plus - minus) / (2.0 * f64::from(h));
            let op = f64::from(grad[i]);
            assert!(
                (fd - op).abs() <= 0.02 * op.abs() + 2e-4,
                "param {id} [{i}]: finite differences {fd}, autograd {op}"
            );
        }
    }
}

#[test]
fn prefix_gradients_match_finite_differences_on_nano() {
    let (_f, model, _b) = nano_exact();
    check_gradients(&Prefix::random(&model.config, 3, 4).unwrap().into());
}

/// Through the reparameterisation MLP: the embedding's, W1's and every head's gradients.
#[test]
fn reparameterised_prefix_gradients_match_finite_differences_on_nano() {
    let (_f, model, _b) = nano_exact();
    check_gradients(
        &Prefix::reparameterised(&model.config, 3, 7, 4)
            .unwrap()
            .into(),
    );
}

/// Folding the MLP away gives the keys and values it makes: the same loss.
#[test]
fn a_folded_prefix_computes_the_same_loss() {
    let (_f, model, b) = nano_exact();
    let m: Method = Prefix::reparameterised(&model.config, 4, 16, 9)
        .unwrap()
        .into();
    let examples = [random_example(12, model.config.n_vocab, 5)];
    let with_mlp = eval_loss(&b, &model, &m, &examples).unwrap();
    let folded = eval_loss(&b, &model, &m.folded(), &examples).unwrap();
    assert!(
        (with_mlp - folded).abs() < 1e-5 * with_mlp,
        "{with_mlp} through the MLP, {folded} folded"
    );
}

#[test]
fn bottleneck_gradients_match_finite_differences_on_nano() {
    let (_f, model, _b) = nano_exact();
    let mut bn = Bottleneck::new(&model.config, 5, Placement::Houlsby, 6).unwrap();
    // Non-zero `up`, else `down`'s gradient would be 0.
    let mut rng = Rng::new(8);
    for a in &mut bn.adapters {
        a.up.iter_mut().for_each(|v| *v = 0.3 * rng.uniform());
    }
    check_gradients(&bn.into());
}

/// The mean loss of `examples` through the inference forward pass of `model` (a solo cache;
/// `lead` tokens, the virtual ones, first).
fn run_loss(b: &CpuBackend, model: &Model<CpuBackend>, examples: &[Example]) -> f32 {
    let lead = model.virtual_tokens();
    let n_vocab = model.config.n_vocab;
    let (mut sum, mut n) = (0.0f64, 0usize);
    for ex in examples {
        let ids: Vec<u32> = lead.iter().chain(&ex.tokens).copied().collect();
        let mut cache = SoloCache::new(b, model, ids.len(), KvType::F32).unwrap();
        let logits = cache.forward(model, b, &ids, ex.tokens.len()).unwrap();
        let logits = b.read(&logits).unwrap();
        for (i, &t) in ex.targets().iter().enumerate() {
            if t < 0.0 {
                continue;
            }
            let row = &logits[i * n_vocab..(i + 1) * n_vocab];
            let m = row.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f32>().ln();
            sum += f64::from(lse - row[t as usize]);
            n += 1;
        }
    }
    (sum / n as f64) as f32
}

/// Trains `method` on a tiny text at learning rate `lr`, checks the loss fell, saves it,
/// reads it back, applies it at run time and checks the run-time loss equals the training
/// graph's.
fn train_save_run(mut method: Method, lr: f32) {
    let (f, model, b) = nano_exact();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let text = "The capital of Zorbia is Quellmoor. ".repeat(6);
    let examples = data::plain(&text, &tok, 32).unwrap();
    let opts = TrainOptions {
        optim: AdamWConfig {
            lr,
            decay: Decay::Constant,
            ..AdamWConfig::default()
        },
        epochs: 8,
        grad_accum: 1,
        seed: 3,
        activation_budget: DEFAULT_ACTIVATION_BUDGET,
    };
    let before = eval_loss(&b, &model, &method, &examples).unwrap();
    let losses = train(&b, &model, &mut method, &examples, &opts, &mut |_| true).unwrap();
    let after = eval_loss(&b, &model, &method, &examples).unwrap();
    assert!(
        after < 0.5 * before,
        "loss {before} before, {after} after; per step {losses:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adapter.gguf");
    adapter_file::save_method(&method, "llama", &path).unwrap();
    let back = adapter_file::load_method(&path).unwrap();
    assert_eq!(back.n_param_tensors(), method.n_param_tensors());
    for id in 0..method.n_param_tensors() {
        assert_eq!(back.values(id), method.values(id), "param {id}");
    }
    let (f2, mut model2, b2) = nano_exact();
    let spec = hearth::engine::AdapterSpec {
        path: path.clone(),
        scale: 1.0,
    };
    hearth::engine::apply_adapters(&b2, &f2, &mut model2, &[spec]).unwrap();
    let at_run = run_loss(&b2, &model2, &examples);
    assert!(
        (at_run - after).abs() < 1e-3 * after.max(1.0),
        "loss with the adapter applied at run time {at_run}, in training {after}"
    );
}

#[test]
fn prefix_trains_saves_and_runs_on_nano() {
    let (f, model, b) = nano_exact();
    let tok = Tokenizer::from_gguf(&f).unwrap();
    let start = tok.encode("Once upon a time", false).unwrap();
    let p = Prefix::from_text(&b, &model, 6, &start).unwrap();
    // Prefix tuning wants a larger step than LoRA (PEFT's examples use 1e-2 to 3e-2 on
    // larger models).
    train_save_run(p.into(), 5e-2);
}

#[test]
fn bottleneck_trains_saves_and_runs_on_nano() {
    let (_f, model, _b) = nano_exact();
    let bn = Bottleneck::new(&model.config, 8, Placement::Pfeiffer, 2).unwrap();
    train_save_run(bn.into(), 1e-2);
}

/// A prefix made from a text's cached keys and values is that text read first: through the
/// runtime (paged cache, batching, the prefix cache on a second run), greedy answers with the
/// prefix equal the base model's answers to the text followed by the prompt. The 20 virtual
/// tokens span two cache blocks.
#[test]
fn prefix_from_text_is_reading_the_text_first_in_the_runtime() {
    use hearth::generate::generate;
    use hearth::options::GenerateOptions;
    use hearth::runtime::{Runtime, Sequence};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;

    let (f, base, b) = nano_exact();
    let tok = Arc::new(Tokenizer::from_gguf(&f).unwrap());
    let text = tok.encode(
        "Once upon a time there was a small village by the sea where",
        false,
    );
    let text: Vec<u32> = text.unwrap().into_iter().cycle().take(20).collect();
    let p = Prefix::from_text(&b, &base, 20, &text).unwrap();
    let (_f2, mut with_prefix, b2) = nano_exact();
    with_prefix
        .set_prefix(&b2, p.n_virtual, &p.keys, &p.values)
        .unwrap();
    let mut opts = GenerateOptions::default();
    opts.set("temperature", "0").unwrap();
    opts.num_predict = Some(8);
    let prompts: Vec<Vec<u32>> = ["The king said", "In the morning"]
        .iter()
        .map(|s| tok.encode(s, false).unwrap())
        .collect();
    let answers = |rt: &mut Runtime<CpuBackend>, lead: &[u32]| -> Vec<Vec<u32>> {
        let mut seqs: Vec<Sequence> = prompts
            .iter()
            .map(|p| {
                let ids = lead.iter().chain(p).copied().collect();
                Sequence::new(tok.clone(), ids, &opts, 128).unwrap()
            })
            .collect();
        let mut out = vec![Vec::new(); seqs.len()];
        generate(rt, &mut seqs, &AtomicBool::new(false), &mut |i, e| {
            out[i].extend(e.token);
            Ok(())
        })
        .unwrap();
        out
    };
    let mut rt_base = Runtime::new(Arc::new(b), Arc::new(base), 512, KvType::F32).unwrap();
    let want = answers(&mut rt_base, &text);
    let mut rt = Runtime::new(Arc::new(b2), Arc::new(with_prefix), 512, KvType::F32).unwrap();
    assert_eq!(answers(&mut rt, &[]), want);
    // Again: the virtual tokens' blocks now come from the prefix cache.
    assert_eq!(answers(&mut rt, &[]), want);
    assert!(want.iter().all(|a| !a.is_empty()));
}

/// On the GPU backend (lavapipe here): the training graph of a reparameterised prefix and of
/// bottleneck adapters gives the CPU's loss and gradients (relative L2 error under 1e-4), and
/// the run-time forward pass with the prefix and adapters gives the CPU's logits.
#[test]
fn prefix_and_bottleneck_on_gpu_match_cpu_on_nano() {
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
    let mut bn = Bottleneck::new(c, 5, Placement::Houlsby, 6).unwrap();
    let mut rng = Rng::new(8);
    for a in &mut bn.adapters {
        a.up.iter_mut().for_each(|v| *v = 0.3 * rng.uniform());
    }
    let prefix = Prefix::reparameterised(c, 3, 7, 4).unwrap();
    let ex = random_example(9, c.n_vocab, 5);
    let targets = ex.targets();
    let rel = |x: &[f32], y: &[f32]| -> f64 {
        let num: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
        let den: f64 = x.iter().map(|a| f64::from(*a).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    };
    for m in [Method::from(prefix.clone()), Method::from(bn.clone())] {
        let cg = TrainGraph::new(&b, &model)
            .unwrap()
            .loss_and_grads(&m, &m.upload(&b).unwrap(), &ex.tokens, &targets, None)
            .unwrap();
        let gg = TrainGraph::new(&gpu, &gmodel)
            .unwrap()
            .loss_and_grads(&m, &m.upload(&gpu).unwrap(), &ex.tokens, &targets, None)
            .unwrap();
        assert!((cg.loss_sum - gg.loss_sum).abs() < 1e-4 * cg.loss_sum.abs());
        for id in 0..m.n_param_tensors() {
            let x = b.read(cg.grads[id].as_ref().unwrap()).unwrap();
            let y = gpu.read(gg.grads[id].as_ref().unwrap()).unwrap();
            assert!(rel(&x, &y) < 1e-4, "param {id}: GPU vs CPU {}", rel(&x, &y));
        }
    }

    // Run time: the folded prefix and the adapters on both backends.
    let dir = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for (name, m) in [("p", Method::from(prefix)), ("b", Method::from(bn))] {
        let path = dir.path().join(format!("{name}.gguf"));
        adapter_file::save_method(&m, "llama", &path).unwrap();
        specs.push(hearth::engine::AdapterSpec { path, scale: 1.0 });
    }
    let (mut cm, mut gm) = (model, gmodel);
    hearth::engine::apply_adapters(&b, &f, &mut cm, &specs).unwrap();
    hearth::engine::apply_adapters(&gpu, &f, &mut gm, &specs).unwrap();
    let ids: Vec<u32> = cm
        .virtual_tokens()
        .into_iter()
        .chain(ex.tokens.clone())
        .collect();
    let mut cc = SoloCache::new(&b, &cm, ids.len(), KvType::F32).unwrap();
    let x = b.read(&cc.forward(&cm, &b, &ids, 4).unwrap()).unwrap();
    let mut gc = SoloCache::new(&gpu, &gm, ids.len(), KvType::F32).unwrap();
    let y = gpu.read(&gc.forward(&gm, &gpu, &ids, 4).unwrap()).unwrap();
    assert!(rel(&x, &y) < 1e-4, "logits GPU vs CPU {}", rel(&x, &y));
}

/// Keeping layers' tapes from the forward (the activation budget) or recomputing them gives
/// the same loss and gradients bit for bit, for every method: LoRA with dropout, a
/// reparameterised prefix, bottleneck adapters, on two packed examples (slices and joins),
/// with every layer recomputed (budget 0), only the first kept (1 byte), or all kept. The
/// loss-only pass (evaluation) gives the same loss.
#[test]
fn kept_and_recomputed_layers_give_the_same_gradients() {
    let (_f, model, b) = nano_exact();
    let c = &model.config;
    let lora = LoraConfig {
        targets: Target::ALL.to_vec(),
        rank: 3,
        alpha: 6.0,
        dropout: 0.2,
        rslora: false,
    };
    let mut lora = Lora::new(lora, c, c.n_layers, 7).unwrap();
    let mut bn = Bottleneck::new(c, 5, Placement::Houlsby, 6).unwrap();
    let mut rng = Rng::new(9);
    lora.pairs
        .iter_mut()
        .for_each(|p| p.b.iter_mut().for_each(|v| *v = 0.3 * rng.uniform()));
    bn.adapters
        .iter_mut()
        .for_each(|a| a.up.iter_mut().for_each(|v| *v = 0.3 * rng.uniform()));
    let prefix = Prefix::reparameterised(c, 3, 7, 4).unwrap();
    let ex = random_example(11, c.n_vocab, 5);
    let targets = ex.targets();
    let segments = [5, 6];
    for m in [Method::from(lora), Method::from(prefix), Method::from(bn)] {
        let params = m.upload(&b).unwrap();
        let run = |budget: usize| {
            let mut graph = TrainGraph::new(&b, &model).unwrap();
            graph.set_activation_budget(budget);
            let g = graph
                .packed_loss_and_grads(&m, &params, &ex.tokens, &targets, Some(3), &segments)
                .unwrap();
            let grads: Vec<Vec<u32>> = g
                .grads
                .iter()
                .map(|t| {
                    let v = b.read(t.as_ref().unwrap()).unwrap();
                    v.iter().map(|x| x.to_bits()).collect()
                })
                .collect();
            (g.loss_sum.to_bits(), grads)
        };
        let all = run(DEFAULT_ACTIVATION_BUDGET);
        assert!(all == run(0), "every layer recomputed");
        assert!(all == run(1), "the first layer kept");
        let graph = TrainGraph::new(&b, &model).unwrap();
        let no_dropout = graph
            .packed_loss_and_grads(&m, &params, &ex.tokens, &targets, None, &segments)
            .unwrap();
        let (loss, n) = graph
            .packed_loss(&m, &params, &ex.tokens, &targets, &segments)
            .unwrap();
        assert_eq!((loss, n), (no_dropout.loss_sum, no_dropout.n_targets));
    }
}
