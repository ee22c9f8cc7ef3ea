//! Chat-template tests: rendering byte-identical to transformers' `apply_chat_template` for
//! SmolLM2, Gemma 3 and Llama 3 (goldens from tools/make_template_goldens.py), the built-in
//! templates, the choice of template for a GGUF, and templates that must fail cleanly.

use hearth::gguf::{Array, GgufFile, GgufWriter, Value, ValueType};
use hearth::tokenizer::{builtin_template, template_for, ChatTemplate, Message, Tokenizer};
use hearth::Error;
use serde::Deserialize;

use crate::common;

#[derive(Deserialize)]
struct Golden {
    template: String,
    bos_token: String,
    eos_token: String,
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    messages: Vec<Message>,
    add_generation_prompt: bool,
    rendered: String,
}

fn golden(name: &str) -> Golden {
    let json = std::fs::read_to_string(common::data(&format!("templates/{name}.json")))
        .expect("golden JSON in tests/data");
    serde_json::from_str(&json).expect("golden JSON parses")
}

fn check(name: &str, template: &ChatTemplate, golden: &Golden) {
    assert!(golden.cases.len() >= 10, "{name}: too few cases");
    for case in &golden.cases {
        let rendered = template
            .render(&case.messages, case.add_generation_prompt)
            .expect("renders");
        assert_eq!(
            rendered, case.rendered,
            "{name}: {:?} (generation prompt {})",
            case.messages, case.add_generation_prompt
        );
    }
}

fn check_golden(name: &str) {
    let g = golden(name);
    let template = ChatTemplate::new(&g.template, &g.bos_token, &g.eos_token).expect("parses");
    check(name, &template, &g);
}

#[test]
fn smollm2_renders_as_transformers() {
    check_golden("smollm2");
}

#[test]
fn gemma3_renders_as_transformers() {
    check_golden("gemma3");
}

#[test]
fn llama3_renders_as_transformers() {
    check_golden("llama3");
}

/// Qwen3's published template (thinking blocks, tool calls, `messages[::-1]`, string methods).
#[test]
fn qwen3_renders_as_transformers() {
    check_golden("qwen3");
}

/// The built-ins are the very texts the goldens were rendered from.
#[test]
fn builtins_are_the_golden_templates() {
    for name in ["gemma3", "llama3"] {
        assert_eq!(builtin_template(name), Some(golden(name).template.as_str()));
    }
    assert!(builtin_template("chatml").is_some());
    assert_eq!(builtin_template("nonesuch"), None);
}

#[test]
fn template_for_prefers_the_files_own_then_the_family() {
    // SmolLM2 carries its own template.
    let (f, tok) = crate::tokenizer::vocab("smollm2");
    let own = template_for(f, tok).expect("template");
    check("smollm2 via template_for", &own, &golden("smollm2"));
    // Gemma 3's GGUF and this Llama 3 vocabulary have none: the built-ins, with the
    // vocabulary's BOS.
    for name in ["gemma3", "llama3"] {
        let (f, tok) = crate::tokenizer::vocab(name);
        assert!(tok.chat_template().is_none(), "{name}");
        let builtin = template_for(f, tok).expect("template");
        check(&format!("{name} via template_for"), &builtin, &golden(name));
    }
}

#[test]
fn chatml_is_the_fallback() {
    let mut w = GgufWriter::new();
    let strings = |items: &[&str]| {
        Value::Array(
            Array::from_values(
                ValueType::String,
                items.iter().map(|s| Value::String(s.to_string())),
            )
            .unwrap(),
        )
    };
    w.set("general.architecture", Value::String("mistery".into()))
        .expect("set");
    w.set("tokenizer.ggml.model", Value::String("gpt2".into()))
        .expect("set");
    w.set(
        "tokenizer.ggml.tokens",
        strings(&["<|im_start|>", "<|im_end|>", "a"]),
    )
    .expect("set");
    w.set("tokenizer.ggml.merges", strings(&[])).expect("set");
    let f = GgufFile::from_bytes(w.to_bytes()).expect("parses");
    // No merges: that vocabulary is refused, so check the fallback choice on the template alone.
    assert!(Tokenizer::from_gguf(&f).is_err());
    let chatml =
        ChatTemplate::new(builtin_template("chatml").expect("built in"), "", "").expect("parses");
    let out = chatml
        .render(&[Message::new("user", "Hi")], true)
        .expect("renders");
    assert_eq!(
        out,
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
}

#[test]
fn bad_jinja_is_a_template_error() {
    for source in [
        "{% for m in messages %}",
        "{{ messages[0] ",
        "{% if %}{% endif %}",
    ] {
        match ChatTemplate::new(source, "", "") {
            Err(Error::Template(msg)) => assert!(msg.contains("not valid Jinja"), "{msg}"),
            Err(other) => panic!("wrong error kind for {source:?}: {other}"),
            Ok(_) => panic!("accepted {source:?}"),
        }
    }
}

#[test]
fn raise_exception_is_a_template_error() {
    // Gemma 3's template refuses roles that do not alternate.
    let t = ChatTemplate::new(
        builtin_template("gemma3").expect("built in"),
        "<bos>",
        "<eos>",
    )
    .expect("parses");
    let messages = [Message::new("user", "a"), Message::new("user", "b")];
    match t.render(&messages, true) {
        Err(Error::Template(msg)) => {
            assert!(msg.contains("Conversation roles must alternate"), "{msg}")
        }
        other => panic!("expected a template error, got {other:?}"),
    }
    // An error inside rendering (not raise_exception) is one too.
    let t = ChatTemplate::new("{{ messages[0].content.nope() }}", "", "").expect("parses");
    assert!(matches!(
        t.render(&[Message::new("user", "x")], false),
        Err(Error::Template(_))
    ));
}

/// What real templates lean on beyond the three above: Python string methods, namespace(),
/// loop.last, tojson as Python's json.dumps writes it, and strftime_now.
#[test]
fn python_flavoured_jinja() {
    let source = concat!(
        "{% set ns = namespace(n=0) %}",
        "{% for m in messages %}{% set ns.n = ns.n + 1 %}",
        "{{ m.role.upper() }}:{{ m.content.strip() }}{% if m.content.startswith(' x') %}!{% endif %}",
        "{% if not loop.last %}|{% endif %}{% endfor %}",
        " n={{ ns.n }} {{ messages[0] | tojson }} {{ {'a': [1, 2.5, none, true]} | tojson }}",
        " {{ 'a<b' | tojson }} {{ strftime_now('%Y') | length }}",
        "{% for m in messages %}{% if loop.index0 == 1 %}{% break %}{% endif %}.{% endfor %}",
    );
    let t = ChatTemplate::new(source, "", "").expect("parses");
    let out = t
        .render(
            &[
                Message::new("user", " x y "),
                Message::new("assistant", "z"),
            ],
            false,
        )
        .expect("renders");
    assert_eq!(
        out,
        "USER:x y!|ASSISTANT:z n=2 {\"role\": \"user\", \"content\": \" x y \"} \
         {\"a\": [1, 2.5, null, true]} \"a<b\" 4."
    );
}

#[test]
fn strftime_formats_utc_times() {
    use hearth::tokenizer::template::strftime;
    // 2024-07-26 13:25:09 UTC, a Friday, day 208.
    let t = 1_722_000_309;
    assert_eq!(strftime("%d %b %Y", t), "26 Jul 2024");
    assert_eq!(
        strftime("%A %B %e, %y %H:%M:%S %j %p %I %%", t),
        "Friday July 26, 24 13:25:09 208 PM 01 %"
    );
    assert_eq!(strftime("%F %a %Q", 0), "1970-01-01 Thu %Q");
    assert_eq!(strftime("%Y-%m-%d", 951_782_400), "2000-02-29");
    assert_eq!(strftime("%Y-%m-%d", -86_400), "1969-12-31");
}

#[test]
fn tojson_floats_are_written_as_python_does() {
    use hearth::tokenizer::template::python_float_repr;
    for (f, want) in [
        (2.5, "2.5"),
        (1.0, "1.0"),
        (-0.0, "-0.0"),
        (0.1, "0.1"),
        (1e16, "1e+16"),
        (1.5e-5, "1.5e-05"),
        (0.0001, "0.0001"),
        (123456789.125, "123456789.125"),
        (1e22, "1e+22"),
        (f64::INFINITY, "Infinity"),
        (f64::NAN, "NaN"),
    ] {
        assert_eq!(python_float_repr(f), want, "{f}");
    }
}
