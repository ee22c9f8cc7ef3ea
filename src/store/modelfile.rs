//! The Modelfile: Ollama's recipe for a model (`FROM`, `PARAMETER`, `TEMPLATE`, `SYSTEM`,
//! `LICENSE`, `MESSAGE`, `ADAPTER`), parsed with line numbers so every error points at its line, and
//! rendered back (`hearth show --modelfile`) in a form that parses to the same thing.
//!
//! Syntax: one instruction per line (case-insensitive), `#` starts a comment line; a value is
//! the rest of the line, a `"..."` string (escapes `\"`, `\\`, `\n`, `\t`) or a `"""..."""`
//! string that may span lines and is kept verbatim. `PARAMETER` and `MESSAGE` take a word
//! (the parameter name, the role) before their value. Parameters are checked against the
//! generation options (`GenerateOptions::set`) while parsing, so a parsed Modelfile is valid.

use crate::options::GenerateOptions;
use crate::tokenizer::{ChatTemplate, Message};
use crate::{Error, Result};

pub const ROLES: [&str; 3] = ["system", "user", "assistant"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parameter {
    /// 1-based line of the `PARAMETER` instruction.
    pub line: usize,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Modelfile {
    /// A GGUF path (relative to the Modelfile's directory) or a model name.
    pub from: String,
    pub from_line: usize,
    pub parameters: Vec<Parameter>,
    pub template: Option<String>,
    pub system: Option<String>,
    pub licenses: Vec<String>,
    pub messages: Vec<Message>,
    /// `ADAPTER` paths (relative to the Modelfile's directory), in order.
    pub adapters: Vec<AdapterLine>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdapterLine {
    /// 1-based line of the `ADAPTER` instruction.
    pub line: usize,
    pub path: String,
}

fn line_error(line: usize, msg: impl std::fmt::Display) -> Error {
    Error::Store(format!("Modelfile line {line}: {msg}"))
}

impl Modelfile {
    pub fn parse(text: &str) -> Result<Modelfile> {
        let lines: Vec<&str> = text.lines().collect();
        let mut mf = Modelfile::default();
        let mut template_line = None;
        let mut system_line = None;
        let mut options = GenerateOptions::default();
        let mut idx = 0;
        while idx < lines.len() {
            let line_no = idx + 1;
            // Only the start is trimmed: a `"""` value keeps its trailing spaces verbatim.
            let line = lines[idx].trim_start();
            idx += 1;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let (word, rest) = split_word(line);
            let instruction = word.to_ascii_uppercase();
            match instruction.as_str() {
                "FROM" => {
                    if mf.from_line != 0 {
                        return Err(line_error(
                            line_no,
                            format!("FROM is given twice (first on line {})", mf.from_line),
                        ));
                    }
                    mf.from = value(rest, &lines, &mut idx, line_no, "FROM")?;
                    mf.from_line = line_no;
                }
                "PARAMETER" => {
                    let (name, rest) = split_word(rest);
                    if name.is_empty() {
                        return Err(line_error(
                            line_no,
                            "PARAMETER needs a name and a value, e.g. `PARAMETER temperature 0.7`",
                        ));
                    }
                    let value = value(rest, &lines, &mut idx, line_no, "PARAMETER")?;
                    options.set(name, &value).map_err(|e| {
                        line_error(line_no, format!("PARAMETER {name} {value:?}: {e}"))
                    })?;
                    mf.parameters.push(Parameter {
                        line: line_no,
                        name: name.to_string(),
                        value,
                    });
                }
                "TEMPLATE" => {
                    once(&mut template_line, line_no, "TEMPLATE")?;
                    let source = value(rest, &lines, &mut idx, line_no, "TEMPLATE")?;
                    check_jinja(&source, line_no)?;
                    mf.template = Some(source);
                }
                "SYSTEM" => {
                    once(&mut system_line, line_no, "SYSTEM")?;
                    mf.system = Some(value(rest, &lines, &mut idx, line_no, "SYSTEM")?);
                }
                "LICENSE" => mf
                    .licenses
                    .push(value(rest, &lines, &mut idx, line_no, "LICENSE")?),
                "MESSAGE" => {
                    let (role, rest) = split_word(rest);
                    let role = role.to_ascii_lowercase();
                    if !ROLES.contains(&role.as_str()) {
                        return Err(line_error(
                            line_no,
                            format!(
                                "MESSAGE role {role:?} is not one of {}; write e.g. \
                                 `MESSAGE user Hello`",
                                ROLES.join(", ")
                            ),
                        ));
                    }
                    let content = value(rest, &lines, &mut idx, line_no, "MESSAGE")?;
                    mf.messages.push(Message::new(role, content));
                }
                "ADAPTER" => {
                    let path = value(rest, &lines, &mut idx, line_no, "ADAPTER")?;
                    mf.adapters.push(AdapterLine {
                        line: line_no,
                        path,
                    });
                }
                _ => {
                    return Err(line_error(
                        line_no,
                        format!(
                            "unknown instruction {word:?}; a Modelfile uses FROM, PARAMETER, \
                             TEMPLATE, SYSTEM, LICENSE, MESSAGE, ADAPTER (and `#` for comments)"
                        ),
                    ))
                }
            }
        }
        if mf.from_line == 0 {
            return Err(Error::Store(
                "the Modelfile has no FROM line; start it with `FROM ./model.gguf` (a GGUF \
                 file) or `FROM smollm2` (a model name)"
                    .into(),
            ));
        }
        Ok(mf)
    }

    /// Writes the Modelfile back; `parse(render())` gives the same instructions (line numbers
    /// aside).
    pub fn render(&self) -> String {
        let mut out = format!("FROM {}\n", quote(&self.from));
        if let Some(t) = &self.template {
            out += &format!("TEMPLATE {}\n", quote(t));
        }
        if let Some(s) = &self.system {
            out += &format!("SYSTEM {}\n", quote(s));
        }
        for p in &self.parameters {
            out += &format!("PARAMETER {} {}\n", p.name, quote(&p.value));
        }
        for l in &self.licenses {
            out += &format!("LICENSE {}\n", quote(l));
        }
        for m in &self.messages {
            out += &format!("MESSAGE {} {}\n", m.role, quote(&m.content));
        }
        for a in &self.adapters {
            out += &format!("ADAPTER {}\n", quote(&a.path));
        }
        out
    }
}

fn once(seen: &mut Option<usize>, line_no: usize, what: &str) -> Result<()> {
    if let Some(first) = *seen {
        return Err(line_error(
            line_no,
            format!("{what} is given twice (first on line {first})"),
        ));
    }
    *seen = Some(line_no);
    Ok(())
}

fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find(char::is_whitespace) {
        Some(i) => (&s[..i], s[i..].trim_start()),
        None => (s.trim_end(), ""),
    }
}

/// Parses an instruction's value starting at `rest` (the line after the instruction word);
/// a `"""` string may consume further lines, advancing `idx`.
fn value(
    rest: &str,
    lines: &[&str],
    idx: &mut usize,
    line_no: usize,
    what: &str,
) -> Result<String> {
    let rest = rest.trim_start();
    if let Some(body) = rest.strip_prefix("\"\"\"") {
        let mut text = body.to_string();
        loop {
            if let Some(end) = text.find("\"\"\"") {
                let after = text[end + 3..].trim();
                if !after.is_empty() {
                    return Err(line_error(
                        *idx,
                        format!("unexpected text {after:?} after the closing \"\"\""),
                    ));
                }
                text.truncate(end);
                return Ok(text);
            }
            let Some(next) = lines.get(*idx) else {
                return Err(line_error(
                    line_no,
                    format!("{what}: the \"\"\" string opened here is never closed"),
                ));
            };
            text.push('\n');
            text.push_str(next);
            *idx += 1;
        }
    }
    if let Some(body) = rest.strip_prefix('"') {
        return quoted(body, line_no, what);
    }
    let rest = rest.trim_end();
    if rest.is_empty() {
        return Err(line_error(line_no, format!("{what} needs a value")));
    }
    Ok(rest.to_string())
}

/// The body of a `"..."` string (after the opening quote), with escapes resolved.
fn quoted(body: &str, line_no: usize, what: &str) -> Result<String> {
    let mut out = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => {
                let after = body[i + 1..].trim();
                if !after.is_empty() {
                    return Err(line_error(
                        line_no,
                        format!("unexpected text {after:?} after the closing quote"),
                    ));
                }
                return Ok(out);
            }
            '\\' => match chars.next().map(|(_, c)| c) {
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                Some(c @ ('"' | '\\')) => out.push(c),
                other => {
                    return Err(line_error(
                        line_no,
                        format!(
                            "unknown escape \\{} in a quoted string (use \\\", \\\\, \\n, \\t, \
                             or a \"\"\" string)",
                            other.map(String::from).unwrap_or_default()
                        ),
                    ))
                }
            },
            c => out.push(c),
        }
    }
    Err(line_error(
        line_no,
        format!("{what}: the quoted string is never closed (a \"...\" string ends on its line)"),
    ))
}

/// Quotes a value so `value()` reads it back unchanged: bare when it is one plain word,
/// `"""` when it spans lines or holds quotes, `"..."` otherwise.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && !s.contains(|c: char| c.is_whitespace() || c == '"' || c == '\\')
        && !s.starts_with('#');
    if plain {
        s.to_string()
    } else if (s.contains('\n') || s.contains('"'))
        && !s.contains("\"\"\"")
        && !s.ends_with('"')
        // Lines are split on LF and CR LF alike, so a CR before an LF would not survive a
        // verbatim string; the escaped form writes the LF as `\n` and keeps the CR.
        && !s.contains("\r\n")
    {
        format!("\"\"\"{s}\"\"\"")
    } else {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out += "\\\"",
                '\\' => out += "\\\\",
                '\n' => out += "\\n",
                '\t' => out += "\\t",
                c => out.push(c),
            }
        }
        out + "\""
    }
}

/// Rejects a template that is not valid Jinja at create time rather than at first chat, with
/// the parser the chat will use.
fn check_jinja(source: &str, line_no: usize) -> Result<()> {
    ChatTemplate::new(source, "", "")
        .map(|_| ())
        .map_err(|e| line_error(line_no, format!("TEMPLATE: {e}")))
}
