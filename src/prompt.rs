//! From a stored model and a request to prompt text and options, written once for the CLI and
//! the server: which chat template a model renders with, the conversation (system prompt, then
//! messages) it renders, and the layering of generation parameters (defaults < the model's
//! `PARAMETER`s < the caller's). It reads stored models, templates and options; it never runs a
//! model.

use crate::gguf::GgufFile;
use crate::options::GenerateOptions;
use crate::store::StoredModel;
use crate::tokenizer::{template_for, ChatTemplate, Message, Tokenizer};
use crate::{Error, Result};

/// The template source `model` renders with when it has one of its own: its `TEMPLATE` layer,
/// else the GGUF's `tokenizer.chat_template`. `None`: Hearth's built-in template for the
/// model's family applies (`tokenizer::template_for`).
pub fn template_source(model: &StoredModel, gguf: &GgufFile) -> Option<String> {
    model.template.clone().or_else(|| {
        gguf.get("tokenizer.chat_template")
            .and_then(|v| v.as_str())
            .map(str::to_string)
    })
}

/// The chat template `model` renders with (the rule of `template_source`), parsed.
pub fn chat_template(
    model: &StoredModel,
    gguf: &GgufFile,
    tokenizer: &Tokenizer,
) -> Result<ChatTemplate> {
    match &model.template {
        Some(source) => ChatTemplate::new(source, tokenizer.bos_text(), tokenizer.eos_text())
            .map_err(|e| match e {
                Error::Template(msg) => Error::Template(format!(
                    "the TEMPLATE of {}: {msg}; fix it in the Modelfile and create the model \
                     again",
                    model.name
                )),
                e => e,
            }),
        None => template_for(gguf, tokenizer),
    }
}

/// The options a request runs with: the defaults, then the model's `PARAMETER`s, then
/// `overrides` (command-line flags, `/set parameter`, a request's options), in that order; a
/// later value of a name replaces an earlier one, except `stop`, whose values add up.
pub fn layered_options(
    model: &StoredModel,
    overrides: &[(String, String)],
) -> Result<GenerateOptions> {
    let mut options = GenerateOptions::default();
    // A stored parameter was checked when the model was created; one that fails now comes
    // from a hand-edited store or an older Hearth, and the message says which model to fix.
    options
        .apply(&model.parameters)
        .map_err(|e| Error::ModelParameter {
            model: model.name.to_string(),
            error: Box::new(e),
        })?;
    options.apply(overrides)?;
    Ok(options)
}

/// A conversation as a model sees it: the system prompt, then the messages.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Conversation {
    /// Sent first, as a `system` message, when set.
    pub system: Option<String>,
    pub messages: Vec<Message>,
}

impl Conversation {
    /// The conversation a model starts with: its `SYSTEM` and its `MESSAGE`s.
    pub fn for_model(model: &StoredModel) -> Conversation {
        Conversation {
            system: model.system.clone(),
            messages: model.messages.clone(),
        }
    }

    /// Every message the template sees: the system prompt first (when set), then the
    /// messages.
    pub fn to_messages(&self) -> Vec<Message> {
        let system = self
            .system
            .iter()
            .map(|s| Message::new("system", s.clone()));
        system.chain(self.messages.iter().cloned()).collect()
    }

    /// The prompt for the model's next message: the conversation rendered through `template`,
    /// ending with the header of the assistant's turn.
    pub fn render(&self, template: &ChatTemplate) -> Result<String> {
        template.render(&self.to_messages(), true)
    }

    /// The prompt for the answer to `user`, sent next; the conversation is unchanged until
    /// `push_turn` records the exchange.
    pub fn render_with(&self, template: &ChatTemplate, user: &str) -> Result<String> {
        let mut messages = self.to_messages();
        messages.push(Message::new("user", user));
        template.render(&messages, true)
    }

    /// Records a finished exchange.
    pub fn push_turn(&mut self, user: &str, answer: &str) {
        self.messages.push(Message::new("user", user));
        self.messages.push(Message::new("assistant", answer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Digest, Layer, LayerKind, Manifest, ModelName};

    fn model(system: Option<&str>, parameters: &[(&str, &str)]) -> StoredModel {
        let name: ModelName = "m".parse().expect("a valid name");
        let digest = Digest::of(b"m");
        StoredModel {
            name,
            digest,
            manifest: Manifest::new(Layer::new(LayerKind::Model, digest, 0), Vec::new()),
            model_path: "m.gguf".into(),
            template: None,
            system: system.map(str::to_string),
            parameters: parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            licenses: Vec::new(),
            messages: vec![
                Message::new("user", "hi"),
                Message::new("assistant", "hello"),
            ],
            adapters: Vec::new(),
        }
    }

    #[test]
    fn conversation_puts_the_system_prompt_first_and_renders_the_next_turn() {
        let template = ChatTemplate::new(
            "{% for m in messages %}[{{ m.role }}:{{ m.content }}]{% endfor %}\
             {% if add_generation_prompt %}[assistant:{% endif %}",
            "",
            "",
        )
        .unwrap();
        let mut c = Conversation::for_model(&model(Some("be brief"), &[]));
        let prompt = c.render_with(&template, "why?").unwrap();
        assert_eq!(
            prompt,
            "[system:be brief][user:hi][assistant:hello][user:why?][assistant:"
        );
        assert_eq!(c.messages.len(), 2, "rendering changes nothing");
        c.push_turn("why?", "because");
        c.system = None;
        assert_eq!(
            c.render(&template).unwrap(),
            "[user:hi][assistant:hello][user:why?][assistant:because][assistant:"
        );
    }

    #[test]
    fn options_layer_defaults_model_then_overrides() {
        let m = model(
            None,
            &[("temperature", "0.5"), ("top_k", "5"), ("stop", "A")],
        );
        let overrides = [("top_k", "7"), ("stop", "B")].map(|(k, v)| (k.into(), v.into()));
        let o = layered_options(&m, &overrides).unwrap();
        assert_eq!(o.sampler.temperature, 0.5);
        assert_eq!(o.sampler.top_k, 7);
        assert_eq!(o.stop, ["A", "B"]);
        assert_eq!(o.sampler.top_p, GenerateOptions::default().sampler.top_p);

        let bad = model(None, &[("top_p", "7")]);
        let err = layered_options(&bad, &[]).unwrap_err().to_string();
        assert!(err.contains("m:latest") && err.contains("top_p"), "{err}");
        let err = layered_options(&m, &[("top_p".into(), "7".into())]).unwrap_err();
        assert!(matches!(err, Error::InvalidParameter { .. }), "{err}");
    }
}
