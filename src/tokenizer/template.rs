//! Chat templates: a model's `tokenizer.chat_template` (Jinja) rendered with minijinja the way
//! transformers' `apply_chat_template` renders it (trim_blocks, lstrip_blocks, Python string
//! methods, `raise_exception`, `strftime_now`, a `tojson` that writes what Python's
//! `json.dumps` writes), and Hearth's built-in templates for files that carry none. Knows
//! Jinja and message lists; the GGUF only through `template_for`.

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::Tokenizer;
use crate::gguf::GgufFile;
use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
    /// An assistant turn's tool calls, `[{"function": {"name", "arguments": {...}}}]` (the
    /// shape Hugging Face templates read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<serde_json::Value>,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
        }
    }
}

/// Variables beyond the messages that a request may hand a template, each only to templates
/// that read it (`ChatTemplate::uses`): `tools`, the tool definitions (transformers' name),
/// and for fill-in-the-middle `prompt` and `suffix`, the text before and after the gap.
#[derive(Clone, Debug, Default)]
pub struct TemplateVars {
    pub tools: Option<serde_json::Value>,
    pub prompt: Option<String>,
    pub suffix: Option<String>,
}

const TEMPLATE_NAME: &str = "chat_template";

/// Instructions one render may run. A real template spends a few hundred per message
/// (SmolLM2's, 1 000 messages: about 40 000); a runaway loop reaches this in well under a
/// second and becomes `Error::Template` instead of a hang. A template is user input (a
/// Modelfile's TEMPLATE, the GGUF's own, a server request), so it gets a budget.
pub const TEMPLATE_FUEL: u64 = 5_000_000;

/// Bytes one render may write: far more than any context holds as text, so only a runaway
/// template reaches it.
pub const TEMPLATE_OUTPUT_LIMIT: usize = 32 << 20;

/// A parsed chat template with the special-token texts it is rendered with.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    /// The variables the template reads that it does not set itself.
    reads: std::collections::HashSet<String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Parses `source`; `Error::Template` with the line of the mistake when it is not valid
    /// Jinja.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        // transformers renders with these two on (and keep_trailing_newline off, minijinja's
        // default too); without them the whitespace of every real template comes out wrong.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned(TEMPLATE_NAME, source.to_string())
            .map_err(|e| Error::Template(format!("the template is not valid Jinja: {e:#}")))?;
        let reads = env
            .get_template(TEMPLATE_NAME)
            .map(|t| t.undeclared_variables(false))
            .unwrap_or_default();
        Ok(ChatTemplate {
            env,
            bos_token: bos_token.to_string(),
            eos_token: eos_token.to_string(),
            reads,
        })
    }

    /// Whether the template reads the variable `name`: how Ollama decides that a model takes
    /// tools (`tools`) or fills in the middle (`suffix`).
    pub fn uses(&self, name: &str) -> bool {
        self.reads.contains(name)
    }

    /// The prompt text for `messages`; with `add_generation_prompt` it ends with the header
    /// of the assistant's turn. Errors (including the template's own `raise_exception`) are
    /// `Error::Template`.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        self.render_with(messages, add_generation_prompt, &TemplateVars::default())
    }

    /// `render` with the request's `vars` defined too (those it leaves out are None).
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        vars: &TemplateVars,
    ) -> Result<String> {
        let template = self
            .env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::Template(format!("{e:#}")))?;
        // The variables transformers passes: `tools` and `documents` are None unless given.
        let ctx = minijinja::context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => &self.bos_token,
            eos_token => &self.eos_token,
            tools => Value::from_serialize(&vars.tools),
            documents => Value::from(()),
            prompt => Value::from_serialize(&vars.prompt),
            suffix => Value::from_serialize(&vars.suffix),
        };
        let mut out = CappedWriter {
            buf: Vec::new(),
            limit: TEMPLATE_OUTPUT_LIMIT,
            hit_limit: false,
        };
        match template.render_captured_to(ctx, &mut out) {
            Ok(_) => String::from_utf8(out.buf)
                .map_err(|_| Error::Template("the template wrote invalid UTF-8".into())),
            Err(_) if out.hit_limit => Err(Error::Template(format!(
                "the template wrote more than {TEMPLATE_OUTPUT_LIMIT} bytes (a runaway loop?)"
            ))),
            Err(e) if e.kind() == ErrorKind::OutOfFuel => Err(Error::Template(format!(
                "the template ran more than {TEMPLATE_FUEL} instructions (a runaway loop?)"
            ))),
            Err(e) => Err(Error::Template(format!("{e:#}"))),
        }
    }
}

/// Collects a render's output and fails the write that would pass `limit` bytes.
struct CappedWriter {
    buf: Vec<u8>,
    limit: usize,
    hit_limit: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(data.len()) > self.limit {
            self.hit_limit = true;
            return Err(std::io::Error::other("template output limit"));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `raise_exception(message)`: the template's way of refusing a conversation (for example
/// roles that do not alternate).
fn raise_exception(message: String) -> std::result::Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("the template refused the conversation: {message}"),
    ))
}

/// `strftime_now(format)`: the current UTC time, for templates that print today's date.
fn strftime_now(format: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    strftime(&format, secs)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// The common strftime codes for a UTC time given as seconds since 1970 (C locale).
/// Unknown codes are kept as written, as glibc does.
pub fn strftime(format: &str, unix_secs: i64) -> String {
    let days = unix_secs.div_euclid(86_400);
    let secs_of_day = unix_secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    let (hour, minute, second) = (
        secs_of_day / 3600,
        secs_of_day % 3600 / 60,
        secs_of_day % 60,
    );
    // 1970-01-01 was a Thursday (index 3 with Monday = 0).
    let weekday = (days + 3).rem_euclid(7) as usize;
    let day_of_year = days - days_from_civil(year, 1, 1) + 1;
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = format.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('e') => out.push_str(&format!("{day:2}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year.rem_euclid(100))),
            Some('b') | Some('h') => out.push_str(&month_name[..3]),
            Some('B') => out.push_str(month_name),
            Some('a') => out.push_str(&WEEKDAYS[weekday][..3]),
            Some('A') => out.push_str(WEEKDAYS[weekday]),
            Some('H') => out.push_str(&format!("{hour:02}")),
            Some('I') => out.push_str(&format!("{:02}", (hour + 11) % 12 + 1)),
            Some('p') => out.push_str(if hour < 12 { "AM" } else { "PM" }),
            Some('M') => out.push_str(&format!("{minute:02}")),
            Some('S') => out.push_str(&format!("{second:02}")),
            Some('j') => out.push_str(&format!("{day_of_year:03}")),
            Some('F') => out.push_str(&format!("{year}-{month:02}-{day:02}")),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// transformers' `tojson`: Python's `json.dumps(x, ensure_ascii=False, indent=indent,
/// sort_keys=sort_keys)`, so ", " and ": " separators and no HTML escaping (minijinja's own
/// filter writes compact, HTML-safe JSON, which changes prompts).
fn tojson(value: &Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let _ensure_ascii: Option<bool> = kwargs.get("ensure_ascii")?;
    kwargs.assert_all_used()?;
    let indent = match indent {
        None => None,
        Some(v) if v.is_none() => None,
        Some(v) => match v.as_i64() {
            Some(n) => Some(" ".repeat(n.clamp(0, 64) as usize)),
            None => Some(v.as_str().unwrap_or("  ").to_string()),
        },
    };
    let mut out = String::new();
    write_json(
        &mut out,
        value,
        indent.as_deref(),
        sort_keys.unwrap_or(false),
        0,
    )?;
    Ok(Value::from_safe_string(out))
}

fn write_json(
    out: &mut String,
    value: &Value,
    indent: Option<&str>,
    sort_keys: bool,
    depth: usize,
) -> std::result::Result<(), minijinja::Error> {
    if depth > 64 {
        return Err(minijinja::Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    let newline = |out: &mut String, level: usize| {
        if let Some(ind) = indent {
            out.push('\n');
            for _ in 0..level {
                out.push_str(ind);
            }
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match value.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            if let Some(i) = value.as_i64() {
                out.push_str(&i.to_string());
            } else if let Ok(f) = f64::try_from(value.clone()) {
                out.push_str(&python_float_repr(f));
            } else {
                out.push_str(&value.to_string());
            }
        }
        ValueKind::String => write_json_string(out, value.as_str().unwrap_or_default()),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = value.try_iter()?.collect();
            if items.is_empty() {
                out.push_str("[]");
                return Ok(());
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(out, item, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = value.try_iter()?.collect();
            if keys.is_empty() {
                out.push_str("{}");
                return Ok(());
            }
            if sort_keys {
                keys.sort();
            }
            out.push('{');
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                match key.as_str() {
                    Some(s) => write_json_string(out, s),
                    None => write_json_string(out, &key.to_string()),
                }
                out.push_str(": ");
                let item = value.get_item(key)?;
                write_json(out, &item, indent, sort_keys, depth + 1)?;
            }
            newline(out, depth);
            out.push('}');
        }
        _ => write_json_string(out, &value.to_string()),
    }
    Ok(())
}

/// A JSON string as Python writes it with `ensure_ascii=False`.
fn write_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `repr(float)`: the shortest round-trip digits, positional for exponents in
/// [-4, 16), scientific (`1e+16`, `1.5e-05`) otherwise, and always a `.0` on whole numbers.
pub fn python_float_repr(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // `{:e}` gives Rust's shortest round-trip digits as "d.ddde±x".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exp) = sci.split_once('e').unwrap_or((sci.as_str(), "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exp) {
        let n_int = exp + 1;
        let body = if n_int <= 0 {
            format!("0.{}{}", "0".repeat((-n_int) as usize), digits)
        } else if n_int as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(n_int as usize - digits.len()))
        } else {
            let (a, b) = digits.split_at(n_int as usize);
            format!("{a}.{b}")
        };
        format!("{sign}{body}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mant = if rest.is_empty() {
            first.to_string()
        } else {
            format!("{first}.{rest}")
        };
        let exp_sign = if exp < 0 { '-' } else { '+' };
        format!("{sign}{mant}e{exp_sign}{:02}", exp.abs())
    }
}

/// Hearth's own templates for model families whose GGUF carries none, as Ollama ships its own:
/// `gemma3`, `llama3` and `chatml`.
pub fn builtin_template(name: &str) -> Option<&'static str> {
    match name {
        "gemma3" => Some(include_str!("templates/gemma3.jinja")),
        "llama3" => Some(include_str!("templates/llama3.jinja")),
        "chatml" => Some(include_str!("templates/chatml.jinja")),
        _ => None,
    }
}

/// The template for a model: the file's own `tokenizer.chat_template`, else the built-in for
/// its family (Gemma 1 to 3; Llama with a Llama 3 vocabulary), else ChatML.
pub fn template_for(f: &GgufFile, tok: &Tokenizer) -> Result<ChatTemplate> {
    let source = match tok.chat_template() {
        Some(own) => own,
        None => {
            let arch = f.architecture().unwrap_or(tok.architecture());
            let name = match arch {
                // Gemma and Gemma 2 use Gemma 3's turn format.
                "gemma" | "gemma2" | "gemma3" => "gemma3",
                "llama" if matches!(tok.pre_tokenizer(), "llama-bpe" | "llama3" | "llama-v3") => {
                    "llama3"
                }
                _ => "chatml",
            };
            builtin_template(name).unwrap_or_default()
        }
    };
    ChatTemplate::new(source, tok.bos_text(), tok.eos_text())
}
