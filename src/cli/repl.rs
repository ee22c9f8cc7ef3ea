//! The interactive chat of `hearth run` (stdin a terminal, no prompt): line editing and
//! history (rustyline), `"""` multi-line messages, and the `/` commands.

use std::path::Path;

use anyhow::Result;
use rustyline::error::ReadlineError;
use rustyline::DefaultEditor;

use super::chat::{Chat, Output};
use super::show;

const HELP: &str = "\
Available commands:
  /set parameter NAME VALUE   set a generation parameter (/set parameter temperature 0.2)
  /set system TEXT            set the system prompt
  /show info                  the model's details
  /show template              the chat template
  /show parameters            the parameters in effect
  /show system                the system prompt
  /show license               the license
  /clear                      forget the conversation
  /bye                        exit (or Ctrl+D)
  /?, /help                   this help

Use \"\"\" to begin and end a multi-line message. Ctrl+C stops an answer.";

/// The line editor with the saved history loaded. Create it before
/// `chat::install_interrupt_handler` (see there).
pub fn editor(history: Option<&Path>) -> Result<DefaultEditor> {
    let mut editor = DefaultEditor::new()?;
    if let Some(path) = history {
        // No history yet is the normal first run.
        let _ = editor.load_history(path);
    }
    Ok(editor)
}

pub fn run(
    mut editor: DefaultEditor,
    chat: &mut Chat,
    out: &Output,
    history: Option<&Path>,
) -> Result<()> {
    loop {
        let line = match read_message(&mut editor)? {
            Input::Line(line) => line,
            Input::Interrupted => {
                eprintln!("Use Ctrl+D or /bye to exit.");
                continue;
            }
            Input::End => break,
        };
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        let _ = editor.add_history_entry(trimmed);
        if let Some(command) = trimmed.strip_prefix('/') {
            match run_command(chat, command) {
                Ok(Flow::Continue) => {}
                Ok(Flow::Exit) => break,
                Err(e) => eprintln!("Error: {e:#}"),
            }
            continue;
        }
        if let Err(e) = chat.turn(&line, out) {
            eprintln!("Error: {e:#}");
        }
        println!();
    }
    if let Some(path) = history {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // Losing the history is not worth failing the session over.
        let _ = editor.save_history(path);
    }
    Ok(())
}

enum Input {
    Line(String),
    Interrupted,
    End,
}

/// One message: a line, or the lines between `"""` and `"""`.
fn read_message(editor: &mut DefaultEditor) -> Result<Input> {
    let first = match editor.readline(">>> ") {
        Ok(line) => line,
        Err(ReadlineError::Interrupted) => return Ok(Input::Interrupted),
        Err(ReadlineError::Eof) => return Ok(Input::End),
        Err(e) => return Err(e.into()),
    };
    let Some(rest) = first.trim_start().strip_prefix("\"\"\"") else {
        return Ok(Input::Line(first));
    };
    if let Some(body) = rest.strip_suffix("\"\"\"") {
        return Ok(Input::Line(body.to_string()));
    }
    let mut text = rest.to_string();
    loop {
        let line = match editor.readline("... ") {
            Ok(line) => line,
            Err(ReadlineError::Interrupted) => return Ok(Input::Interrupted),
            Err(ReadlineError::Eof) => return Ok(Input::End),
            Err(e) => return Err(e.into()),
        };
        if let Some(last) = line.trim_end().strip_suffix("\"\"\"") {
            text.push('\n');
            text.push_str(last);
            return Ok(Input::Line(text.trim_start_matches('\n').to_string()));
        }
        text.push('\n');
        text.push_str(&line);
    }
}

enum Flow {
    Continue,
    Exit,
}

fn run_command(chat: &mut Chat, command: &str) -> Result<Flow> {
    let mut words = command.splitn(3, char::is_whitespace);
    let verb = words.next().unwrap_or_default();
    let arg = words.next().unwrap_or_default();
    let rest = words.next().unwrap_or_default().trim();
    match (verb, arg) {
        ("bye" | "exit", _) => return Ok(Flow::Exit),
        ("?" | "help", _) => println!("{HELP}"),
        ("clear", _) => {
            chat.clear();
            println!("Cleared the conversation.");
        }
        ("set", "parameter") => {
            let (name, value) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            if name.is_empty() || value.trim().is_empty() {
                anyhow::bail!("usage: /set parameter NAME VALUE");
            }
            chat.options.set(name, value.trim())?;
            println!("Set parameter '{name}' to '{}'", value.trim());
        }
        ("set", "system") => {
            if rest.is_empty() {
                anyhow::bail!("usage: /set system TEXT");
            }
            chat.conversation.system = Some(rest.to_string());
            println!("Set system message.");
        }
        ("show", "info") => print!("{}", show::summary(&chat.model)?),
        ("show", "template") => println!("{}", show::template(&chat.model)?.unwrap_or_default()),
        ("show", "parameters") => {
            let rows: Vec<Vec<String>> = chat
                .options
                .to_pairs()
                .into_iter()
                .map(|(k, v)| vec![k, v])
                .collect();
            print!("{}", super::format::columns(&rows));
        }
        ("show", "system") => println!("{}", chat.conversation.system.clone().unwrap_or_default()),
        ("show", "license") => println!("{}", chat.model.licenses.join("\n\n")),
        _ => anyhow::bail!("unknown command /{command}; /? lists the commands"),
    }
    Ok(Flow::Continue)
}
