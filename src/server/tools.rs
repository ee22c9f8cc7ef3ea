//! Tool calling, as Ollama does it: a request's `tools` reach the chat template (only one that
//! reads `tools`; others get a 400), and an answer that consists of tool calls comes back as
//! `tool_calls` rather than text. Models write calls as JSON, `{"name": ..., "arguments":
//! {...}}` (or `parameters`), alone, in a list, wrapped in `<tool_call>` tags (Hermes, Qwen,
//! SmolLM2) or after `[TOOL_CALLS]` (Mistral). An answer is taken as calls only when all of it
//! parses so and every name is one of the request's tools; anything else stays text.

use serde_json::{json, Map, Value};

use super::request::Prompt;
use super::ApiError;
use crate::tokenizer::{ChatTemplate, Message, TemplateVars};

const OPEN_TAG: &str = "<tool_call>";
const CLOSE_TAG: &str = "</tool_call>";
const MISTRAL_PREFIX: &str = "[TOOL_CALLS]";

/// One call the model made.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolCall {
    pub name: String,
    /// Always an object.
    pub arguments: Value,
}

/// The names of a request's tools (`[{"type": "function", "function": {"name", ...}}]`, or
/// bare function objects), checking the list's shape.
pub fn tool_names(tools: &[Value]) -> Result<Vec<String>, ApiError> {
    tools
        .iter()
        .map(|t| {
            let f = t.get("function").unwrap_or(t);
            f.get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.is_empty())
                .map(str::to_string)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "each tool must be {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    )
                })
        })
        .collect()
}

/// The 400 for tools given to a model whose template does not read them, Ollama's message.
pub fn check_supported(
    template: &Result<ChatTemplate, String>,
    model: &str,
    var: &str,
    feature: &str,
) -> Result<(), ApiError> {
    match template {
        Ok(t) if t.uses(var) => Ok(()),
        Ok(_) => Err(ApiError::bad_request(format!(
            "{model:?} does not support {feature}"
        ))),
        Err(e) => Err(ApiError::bad_request(e.clone())),
    }
}

/// A chat's prompt: its messages, with the request's `tools` when it has any (a 400 naming
/// `model` when its template does not read them).
pub fn chat_prompt(
    messages: Vec<Message>,
    tools: &[Value],
    template: &Result<ChatTemplate, String>,
    model: &str,
) -> Result<Prompt, ApiError> {
    if tools.is_empty() {
        return Ok(Prompt::Chat(messages));
    }
    check_supported(template, model, "tools", "tools")?;
    let vars = TemplateVars {
        tools: Some(Value::Array(tools.to_vec())),
        ..TemplateVars::default()
    };
    Ok(Prompt::ChatWith(messages, vars))
}

/// The calls `text` consists of, or None when it is (also) something else.
pub fn parse(text: &str, names: &[String]) -> Option<Vec<ToolCall>> {
    let mut rest = text.trim();
    rest = rest
        .strip_prefix(MISTRAL_PREFIX)
        .unwrap_or(rest)
        .trim_start();
    let mut calls = Vec::new();
    while !rest.is_empty() {
        let json = match rest.strip_prefix(OPEN_TAG) {
            Some(inner) => {
                // A closing tag is optional on the last call (the model may stop at it).
                let end = inner.find(CLOSE_TAG).unwrap_or(inner.len());
                rest = inner[end..].strip_prefix(CLOSE_TAG).unwrap_or("");
                &inner[..end]
            }
            None => std::mem::take(&mut rest),
        };
        for value in serde_json::Deserializer::from_str(json).into_iter::<Value>() {
            match value.ok()? {
                Value::Array(items) => {
                    for item in items {
                        calls.push(call(item, names)?);
                    }
                }
                item => calls.push(call(item, names)?),
            }
        }
        rest = rest.trim_start();
    }
    (!calls.is_empty()).then_some(calls)
}

fn call(v: Value, names: &[String]) -> Option<ToolCall> {
    let Value::Object(mut obj) = v else {
        return None;
    };
    // Some models repeat the request's shape: {"type": "function", "function": {...}}.
    if let Some(Value::Object(f)) = obj.remove("function") {
        obj = f;
    }
    let name = obj.get("name")?.as_str()?.to_string();
    if !names.contains(&name) {
        return None;
    }
    let arguments = match obj.get("arguments").or_else(|| obj.get("parameters")) {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(a)) => Value::Object(a.clone()),
        // OpenAI's form: the arguments as a JSON string.
        Some(Value::String(s)) => match serde_json::from_str(s).ok()? {
            Value::Object(a) => Value::Object(a),
            _ => return None,
        },
        Some(_) => return None,
    };
    Some(ToolCall { name, arguments })
}

/// Whether an answer that begins with `text` may still turn out to be tool calls: a stream
/// holds such text back until it knows.
pub fn may_be_calls(text: &str) -> bool {
    let t = text.trim_start();
    t.is_empty()
        || t.starts_with('{')
        || t.starts_with('[')
        || [OPEN_TAG, MISTRAL_PREFIX]
            .iter()
            .any(|tag| t.starts_with(tag) || tag.starts_with(t))
}

/// Ollama's `tool_calls`: arguments as an object.
pub fn ollama_json(calls: &[ToolCall]) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| json!({ "function": { "index": i, "name": c.name, "arguments": c.arguments } }))
        .collect()
}

/// OpenAI's `tool_calls`: arguments as a JSON string, each call with an id (`index` too in
/// stream deltas).
pub fn openai_json(calls: &[ToolCall], id: &str, stream: bool) -> Value {
    calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({
                "id": format!("call_{id}_{i}"), "type": "function",
                "function": { "name": c.name, "arguments": c.arguments.to_string() },
            });
            if stream {
                v["index"] = json!(i);
            }
            v
        })
        .collect()
}

/// A streamed answer's text while it may still be tool calls: held back, then either sent
/// as text or turned into calls at the end.
pub struct CallStream {
    names: Vec<String>,
    held: String,
    deciding: bool,
}

impl CallStream {
    pub fn new(names: Vec<String>) -> CallStream {
        CallStream {
            names,
            held: String::new(),
            deciding: true,
        }
    }

    /// The text to send now for `piece` (empty while it may still be a call).
    pub fn text(&mut self, piece: String) -> String {
        if !self.deciding {
            return piece;
        }
        self.held.push_str(&piece);
        if may_be_calls(&self.held) {
            return String::new();
        }
        self.deciding = false;
        std::mem::take(&mut self.held)
    }

    /// At the end: the calls the answer was, or the text still held back (empty if none).
    pub fn finish(&mut self) -> Result<Vec<ToolCall>, String> {
        let held = std::mem::take(&mut self.held);
        match parse(&held, &self.names) {
            Some(calls) => Ok(calls),
            None => Err(held),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["get_weather".into(), "add".into()]
    }

    fn weather(city: &str) -> ToolCall {
        ToolCall {
            name: "get_weather".into(),
            arguments: json!({ "city": city }),
        }
    }

    #[test]
    fn parses_the_forms_models_write() {
        let n = names();
        let one = Some(vec![weather("Paris")]);
        for text in [
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#,
            r#"  {"name": "get_weather", "parameters": {"city": "Paris"}}  "#,
            r#"[{"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}]"#,
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}",
            r#"[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}}]"#,
            r#"{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}"#,
        ] {
            assert_eq!(parse(text, &n), one, "{text}");
        }
        let two = "<tool_call>{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}</tool_call>\n<tool_call>{\"name\": \"add\"}</tool_call>";
        let calls = parse(two, &n).unwrap();
        assert_eq!(calls[0], weather("Oslo"));
        assert_eq!(
            (calls[1].name.as_str(), &calls[1].arguments),
            ("add", &json!({}))
        );
    }

    #[test]
    fn anything_else_stays_text() {
        let n = names();
        for text in [
            "",
            "The weather in Paris is sunny.",
            r#"{"name": "delete_everything", "arguments": {}}"#,
            r#"{"name": "get_weather", "arguments": {"city": "Paris"}} and more"#,
            r#"{"name": "get_weather", "arguments": [1]}"#,
            r#"{"name": "get_weather", "arguments": {"city": "Par"#,
            r#"{"city": "Paris"}"#,
            "[1, 2, 3]",
        ] {
            assert_eq!(parse(text, &n), None, "{text}");
        }
    }

    #[test]
    fn a_stream_holds_back_only_what_may_be_a_call() {
        let mut s = CallStream::new(names());
        assert_eq!(s.text("Sure".into()), "Sure");
        assert_eq!(s.text(", here".into()), ", here");
        assert_eq!(s.finish(), Err(String::new()));

        let mut s = CallStream::new(names());
        assert_eq!(s.text(" <tool".into()), "");
        assert_eq!(s.text("_call>{\"name\": \"get_weather\", ".into()), "");
        assert_eq!(s.text("\"arguments\": {\"city\": \"Rome\"}}".into()), "");
        assert_eq!(s.finish(), Ok(vec![weather("Rome")]));

        let mut s = CallStream::new(names());
        assert_eq!(s.text("[".into()), "");
        assert_eq!(s.text("1] is a list".into()), "");
        assert_eq!(s.finish(), Err("[1] is a list".into()));

        let mut s = CallStream::new(names());
        assert_eq!(s.text("<to".into()), "");
        assert_eq!(s.text("p>".into()), "<top>");
    }

    #[test]
    fn tool_names_come_from_either_shape() {
        let tools = [
            json!({"type": "function", "function": {"name": "get_weather"}}),
            json!({"name": "add", "parameters": {}}),
        ];
        assert_eq!(tool_names(&tools).unwrap(), names());
        assert!(tool_names(&[json!({"type": "function"})]).is_err());
    }
}
