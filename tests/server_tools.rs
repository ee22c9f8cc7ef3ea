//! Tools and fill-in-the-middle on `hearth serve`, with nano under Modelfile TEMPLATEs: a
//! template that reads `tools` gets the request's tools (and earlier calls), one that reads
//! `suffix` gets `prompt` and `suffix`; others answer Ollama's 400s. An answer that is a
//! tool call (forced here with a schema) comes back as `tool_calls` in Ollama's and OpenAI's
//! shapes, whole and streamed; any other answer stays text.

use serde_json::{json, Value};

use hearth::gguf::GgufFile;
use hearth::tokenizer::{ChatTemplate, Message, TemplateVars, Tokenizer};

use crate::http::{self, nano_gguf, Fixture};

const TOOLS_TEMPLATE: &str = "{% if tools %}<tools>{% for t in tools %}{{ t.function.name }};\
{% endfor %}</tools>{% endif %}{% for m in messages %}<{{ m.role }}>{{ m.content }}\
{% if m.tool_calls %}{% for c in m.tool_calls %}<call>{{ c.function.name }} \
{{ c.function.arguments | tojson }}</call>{% endfor %}{% endif %}{% endfor %}\
{% if add_generation_prompt %}<assistant>{% endif %}";

const FIM_TEMPLATE: &str = "{% if suffix %}<PRE>{{ prompt }}<SUF>{{ suffix }}<MID>{% else %}\
{% for m in messages %}{{ m.content }}{% endfor %}{% endif %}";

fn start() -> Fixture {
    let toolbox = format!("TEMPLATE \"\"\"{TOOLS_TEMPLATE}\"\"\"\n");
    let filler = format!("TEMPLATE \"\"\"{FIM_TEMPLATE}\"\"\"\n");
    http::start_modelfiles(&[("nano", ""), ("toolbox", &toolbox), ("filler", &filler)])
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "required": ["city"],
                       "properties": {"city": {"type": "string"}}}}})
}

/// A schema that makes nano's answer a call of `get_weather`.
fn call_schema() -> Value {
    json!({"type": "object", "required": ["name", "arguments"], "additionalProperties": false,
           "properties": {"name": {"enum": ["get_weather"]},
                          "arguments": {"type": "object", "required": ["city"],
                                        "additionalProperties": false,
                                        "properties": {"city": {"type": "string",
                                                                "maxLength": 8}}}}})
}

fn nano_tokens(template: &str, messages: &[Message], vars: &TemplateVars) -> usize {
    let tok = Tokenizer::from_gguf(&GgufFile::open(nano_gguf()).unwrap()).unwrap();
    let t = ChatTemplate::new(template, tok.bos_text(), tok.eos_text()).unwrap();
    let text = t.render_with(messages, true, vars).unwrap();
    tok.encode(&text, tok.add_bos()).unwrap().len()
}

#[test]
fn templates_without_tools_or_suffix_refuse_them() {
    let f = start();
    let hi = json!([{"role": "user", "content": "Hi"}]);
    let (status, v) = f.post(
        "/api/chat",
        &json!({"model": "nano", "messages": hi, "tools": [weather_tool()]}),
    );
    assert_eq!(
        (status, &v["error"]),
        (400, &json!("\"nano\" does not support tools"))
    );
    let (status, v) = f.post(
        "/v1/chat/completions",
        &json!({"model": "nano", "messages": hi, "tools": [weather_tool()]}),
    );
    assert_eq!(status, 400);
    assert_eq!(
        v["error"]["message"], "\"nano\" does not support tools",
        "{v}"
    );
    let (status, v) = f.post(
        "/api/generate",
        &json!({"model": "nano", "prompt": "def f(", "suffix": "return 1"}),
    );
    assert_eq!(
        (status, &v["error"]),
        (400, &json!("\"nano\" does not support insert"))
    );
    // The FIM template does not read tools, the tools template does not read suffix.
    let (status, _) = f.post(
        "/api/chat",
        &json!({"model": "filler", "messages": hi, "tools": [weather_tool()]}),
    );
    assert_eq!(status, 400);
    let (status, v) = f.post(
        "/api/generate",
        &json!({"model": "filler", "prompt": "def f(", "suffix": "x", "raw": true}),
    );
    assert_eq!(
        (status, &v["error"]),
        (400, &json!("raw mode does not support suffix"))
    );
    let (status, v) = f.post(
        "/api/chat",
        &json!({"model": "toolbox", "messages": hi, "tools": [{"type": "function"}]}),
    );
    assert_eq!(status, 400, "{v}");
    // `show` names what each template takes.
    let caps = |name: &str| f.post("/api/show", &json!({"model": name})).1["capabilities"].clone();
    assert_eq!(caps("nano"), json!(["completion"]));
    assert_eq!(caps("toolbox"), json!(["completion", "tools"]));
    assert_eq!(caps("filler"), json!(["completion", "insert"]));
    f.assert_serving();
}

#[test]
fn tools_and_suffix_reach_the_template() {
    let f = start();
    let greedy = json!({"temperature": 0, "num_predict": 3});
    // Tools, an earlier call and its result: the prompt is what the template makes of them.
    let call = json!([{"function": {"name": "get_weather", "arguments": {"city": "Oslo"}}}]);
    let messages = json!([
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": "", "tool_calls": call},
        {"role": "tool", "content": "sunny"},
    ]);
    let v = f
        .request(
            "POST",
            "/api/chat",
            Some(
                &json!({"model": "toolbox", "messages": messages, "stream": false,
                         "tools": [weather_tool()], "options": greedy}),
            ),
        )
        .json();
    let history = vec![
        Message::new("user", "Weather in Oslo?"),
        Message {
            tool_calls: Some(call.clone()),
            ..Message::new("assistant", "")
        },
        Message::new("tool", "sunny"),
    ];
    let vars = TemplateVars {
        tools: Some(json!([weather_tool()])),
        ..TemplateVars::default()
    };
    let with_tools = nano_tokens(TOOLS_TEMPLATE, &history, &vars);
    assert_eq!(v["prompt_eval_count"], with_tools, "{v}");
    let without = nano_tokens(TOOLS_TEMPLATE, &history, &TemplateVars::default());
    assert!(with_tools > without);
    // OpenAI's shape of the same history: arguments as a JSON string.
    let oa_messages = json!([
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
    ]);
    let (status, v) = f.post(
        "/v1/chat/completions",
        &json!({"model": "toolbox", "messages": oa_messages, "tools": [weather_tool()],
                "max_tokens": 3, "temperature": 0}),
    );
    assert_eq!(status, 200, "{v}");

    // Fill in the middle: the template saw `prompt` and `suffix` (Ollama's `context` is the
    // prompt's tokens and then the answer's).
    let v = f
        .request(
            "POST",
            "/api/generate",
            Some(
                &json!({"model": "filler", "prompt": "def f(x):", "suffix": "return y",
                         "stream": false, "options": greedy}),
            ),
        )
        .json();
    let tok = Tokenizer::from_gguf(&GgufFile::open(nano_gguf()).unwrap()).unwrap();
    let context: Vec<u32> = serde_json::from_value(v["context"].clone()).unwrap();
    // The answer's tokens end the context; `prompt_eval_count` counts only the prompt tokens
    // not already cached (this engine also served "toolbox", whose prompt began the same).
    let n_answer = v["eval_count"].as_u64().unwrap() as usize;
    let prompt = tok.decode(&context[..context.len() - n_answer]).unwrap();
    assert!(
        prompt.ends_with("<PRE>def f(x):<SUF>return y<MID>"),
        "{prompt:?}"
    );
    f.assert_no_leak();
}

#[test]
fn an_answer_that_is_a_call_comes_back_as_tool_calls() {
    let f = start();
    let ask = json!([{"role": "user", "content": "Weather in Rome?"}]);
    // Nano spells the forced text almost a character a token.
    let opts = json!({"temperature": 0, "num_predict": 150});
    let body = json!({"model": "toolbox", "messages": ask, "tools": [weather_tool()],
                      "format": call_schema(), "options": opts, "stream": false});
    let v = f.request("POST", "/api/chat", Some(&body)).json();
    let msg = &v["message"];
    assert_eq!(msg["content"], "", "{v}");
    let calls = msg["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    let args = calls[0]["function"]["arguments"].clone();
    assert!(args["city"].is_string(), "{args}");
    // Streamed: nothing of the call leaks as text; one chunk carries it, then the last.
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let lines = f.request("POST", "/api/chat", Some(&streamed)).lines();
    let text: String = lines
        .iter()
        .filter_map(|l| l["message"]["content"].as_str())
        .collect();
    assert_eq!(text, "");
    let with_calls: Vec<&Value> = lines
        .iter()
        .filter(|l| l["message"]["tool_calls"].is_array())
        .collect();
    assert_eq!(with_calls.len(), 1);
    assert_eq!(with_calls[0]["message"]["tool_calls"], msg["tool_calls"]);
    assert_eq!(lines.last().unwrap()["done"], true);

    // OpenAI: arguments as a JSON string, finish_reason tool_calls.
    let oa = json!({"model": "toolbox", "messages": ask, "tools": [weather_tool()],
                    "temperature": 0, "max_tokens": 150,
                    "response_format": {"type": "json_schema",
                                        "json_schema": {"name": "call", "schema": call_schema()}}});
    let (status, v) = f.post("/v1/chat/completions", &oa);
    assert_eq!(status, 200, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
    assert!(choice["message"]["content"].is_null());
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(
        (&call["type"], &call["function"]["name"]),
        (&json!("function"), &json!("get_weather"))
    );
    let parsed: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(parsed, args);
    let mut oa_stream = oa.clone();
    oa_stream["stream"] = json!(true);
    let events = f
        .request("POST", "/v1/chat/completions", Some(&oa_stream))
        .sse();
    let deltas: Vec<&Value> = events
        .iter()
        .filter(|e| e["choices"].as_array().is_some_and(|c| !c.is_empty()))
        .map(|e| &e["choices"][0])
        .collect();
    assert!(deltas
        .iter()
        .all(|d| d["delta"]["content"].as_str().unwrap_or("").is_empty()));
    let call = deltas
        .iter()
        .find_map(|d| d["delta"]["tool_calls"].as_array())
        .unwrap();
    assert_eq!(
        (&call[0]["index"], &call[0]["function"]["name"]),
        (&json!(0), &json!("get_weather"))
    );
    assert_eq!(deltas.last().unwrap()["finish_reason"], "tool_calls");

    // Without the schema nano writes no call: text, the same streamed as whole.
    let free = json!({"model": "toolbox", "messages": ask, "tools": [weather_tool()],
                      "options": {"temperature": 0, "num_predict": 12}, "stream": false});
    let whole = f.request("POST", "/api/chat", Some(&free)).json();
    assert!(whole["message"]["tool_calls"].is_null(), "{whole}");
    let mut s = free.clone();
    s["stream"] = json!(true);
    let text: String = f
        .request("POST", "/api/chat", Some(&s))
        .lines()
        .iter()
        .filter_map(|l| l["message"]["content"].as_str().map(str::to_string))
        .collect();
    assert_eq!(text, whole["message"]["content"].as_str().unwrap());
    f.assert_no_leak();
}
