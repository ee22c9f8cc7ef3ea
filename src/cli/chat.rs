//! A loaded model and one conversation: renders the whole conversation with the chat template
//! each turn (`hearth::prompt`; the engine reuses the KV cache for the prefix it already saw),
//! streams the answer to stdout, and turns Ctrl+C into "stop this answer" rather than "kill the
//! program".

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Once;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use hearth::engine::{Engine, LoadOptions};
use hearth::generate::{DoneReason, GenerateStats};
use hearth::options::GenerateOptions;
use hearth::prompt::{self, Conversation};
use hearth::store::StoredModel;
use hearth::tokenizer::ChatTemplate;

use super::progress;

/// Set while an answer is being generated: Ctrl+C then cancels it instead of exiting.
static GENERATING: AtomicBool = AtomicBool::new(false);
/// Polled by the engine between tokens.
static CANCEL: AtomicBool = AtomicBool::new(false);
static HANDLER: Once = Once::new();

/// Makes Ctrl+C cancel the answer being generated (and end the program otherwise). It must
/// run after the REPL's line editor is created: rustyline takes SIGINT over for the editor's
/// lifetime, and the handler installed last is the one that runs. (While a line is read the
/// terminal is raw, so Ctrl+C reaches rustyline as a key, not as a signal.)
pub fn install_interrupt_handler() {
    HANDLER.call_once(|| {
        // Without the handler Ctrl+C still ends the program, which is acceptable; so a
        // failure to install it (another handler exists) is not an error.
        let _ = ctrlc::set_handler(|| {
            if GENERATING.load(Ordering::SeqCst) {
                CANCEL.store(true, Ordering::SeqCst);
            } else {
                std::process::exit(130);
            }
        });
    });
}

/// Where answers and timings go.
pub struct Output {
    verbose: bool,
}

impl Output {
    pub fn new(verbose: bool) -> Output {
        Output { verbose }
    }
}

pub struct Chat {
    pub engine: Engine,
    pub model: StoredModel,
    pub options: GenerateOptions,
    /// The system prompt (`/set system` replaces it) and the messages so far, starting with
    /// the model's own `MESSAGE`s.
    pub conversation: Conversation,
    template: ChatTemplate,
    /// Load time not yet reported by `--verbose`.
    unreported_load: Option<Duration>,
}

impl Chat {
    pub fn load(model: StoredModel, options: GenerateOptions, load: &LoadOptions) -> Result<Chat> {
        let t0 = Instant::now();
        let bar = progress::bytes_bar("loading onto the GPU");
        // The model's own adapters (Modelfile `ADAPTER`) come first, then `--adapter`s.
        let mut load = load.clone();
        let stored = model.adapters.iter().map(|p| hearth::engine::AdapterSpec {
            path: p.clone(),
            scale: 1.0,
        });
        load.adapters.splice(0..0, stored);
        let engine = Engine::load_with_progress(&model.model_path, &load, &mut |done, total| {
            // Small models load in a blink; a bar would only flicker.
            if total >= progress::LARGE_MODEL_BYTES {
                bar.set_length(total);
                bar.set_position(done);
            }
        })
        .with_context(|| format!("cannot load {}", model.name))?;
        bar.finish_and_clear();
        let load_time = t0.elapsed();
        let template = prompt::chat_template(&model, &engine.gguf, &engine.tokenizer)?;
        Ok(Chat {
            conversation: Conversation::for_model(&model),
            engine,
            model,
            options,
            template,
            unreported_load: Some(load_time),
        })
    }

    /// Forgets the conversation (the model's own `MESSAGE`s and the system prompt stay).
    pub fn clear(&mut self) {
        self.conversation.messages = Conversation::for_model(&self.model).messages;
    }

    /// One chat turn: the user's message, then the streamed answer, both kept in the
    /// conversation. A failed turn leaves the conversation as it was.
    pub fn turn(&mut self, user: &str, out: &Output) -> Result<()> {
        let prompt = self.conversation.render_with(&self.template, user)?;
        match self.generate(&prompt, out)? {
            // Stopped before a word was said: as if the message was never sent.
            (answer, DoneReason::Cancelled) if answer.is_empty() => {}
            // A partial answer stays: it is what the user saw.
            (answer, _) => self.conversation.push_turn(user, &answer),
        }
        Ok(())
    }

    /// Completes `prompt` as is (`--raw`): no template, no conversation.
    pub fn complete_raw(&mut self, prompt: &str, out: &Output) -> Result<()> {
        self.generate(prompt, out).map(|_| ())
    }

    /// Streams the answer to `prompt` to stdout; returns its text and why it ended.
    fn generate(&mut self, prompt: &str, out: &Output) -> Result<(String, DoneReason)> {
        let t0 = Instant::now();
        let mut answer = String::new();
        let mut stdout = std::io::stdout();
        let mut on_text = |piece: &str| -> hearth::Result<()> {
            stdout
                .write_all(piece.as_bytes())
                .and_then(|()| stdout.flush())
                .map_err(|e| hearth::Error::io("stdout", e))?;
            answer.push_str(piece);
            Ok(())
        };
        CANCEL.store(false, Ordering::SeqCst);
        GENERATING.store(true, Ordering::SeqCst);
        let result = self
            .engine
            .generate(prompt, &self.options, &CANCEL, &mut on_text);
        GENERATING.store(false, Ordering::SeqCst);
        let stats = result?;
        if !answer.ends_with('\n') {
            writeln!(std::io::stdout())?;
        }
        if stats.done_reason == DoneReason::Cancelled {
            eprintln!("(stopped)");
        }
        if out.verbose {
            let load = self.unreported_load.take().unwrap_or_default();
            eprint!("{}", timings(&stats, load, load + t0.elapsed()));
        }
        Ok((answer, stats.done_reason))
    }
}

/// Ollama's `--verbose` block. The prompt eval count is the tokens evaluated, not those the
/// KV cache already held.
fn timings(stats: &GenerateStats, load: Duration, total: Duration) -> String {
    let rate = |n: usize, d: Duration| {
        let secs = d.as_secs_f64();
        if secs > 0.0 {
            n as f64 / secs
        } else {
            0.0
        }
    };
    let n_prompt = stats.prompt_tokens.saturating_sub(stats.cached_tokens);
    format!(
        "total duration:       {total:?}\n\
         load duration:        {load:?}\n\
         prompt eval count:    {n_prompt} token(s)\n\
         prompt eval duration: {:?}\n\
         prompt eval rate:     {:.2} tokens/s\n\
         eval count:           {} token(s)\n\
         eval duration:        {:?}\n\
         eval rate:            {:.2} tokens/s\n",
        stats.prompt_eval,
        rate(n_prompt, stats.prompt_eval),
        stats.eval_tokens,
        stats.eval,
        rate(stats.eval_tokens, stats.eval),
    )
}
