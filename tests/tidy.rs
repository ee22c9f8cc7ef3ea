//! Tidiness rules that hold for the whole tree, checked on every `cargo test` (as
//! rust-analyzer's tidy test does), each failure listing the offending files:
//!
//! - every `.rs` file under `src/`, `tests/`, `benches/` and `tools/` opens with a `//!` line
//!   saying what it is;
//! - no such file is over 800 lines;
//! - in `src/`, outside `#[cfg(test)]` items and files, `.unwrap()` appears only where the same line or
//!   the line above carries a comment stating why it cannot fail (the invariant). Bad input must
//!   never reach an `unwrap`; a documented invariant may. (`expect("...")` states its invariant
//!   in its message and is allowed.);
//! - ARCHITECTURE.md names every folder under `src/` (as `src/<path>/`).

use std::path::{Path, PathBuf};

const MAX_LINES: usize = 800;
const RUST_DIRS: [&str; 4] = ["src", "tests", "benches", "tools"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every file (and, with `dirs`, folder) under `dir`, sorted; a missing `dir` has none.
fn walk(dir: &Path, dirs: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if dirs {
                out.push(path.clone());
            }
            out.extend(walk(&path, dirs));
        } else if !dirs {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn rust_files() -> Vec<PathBuf> {
    RUST_DIRS
        .iter()
        .flat_map(|d| walk(&root().join(d), false))
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .collect()
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn fail_with(what: &str, offenders: &[String]) {
    assert!(
        offenders.is_empty(),
        "{what}:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn every_rust_file_opens_with_a_module_doc() {
    let offenders: Vec<String> = rust_files()
        .into_iter()
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap();
            !text.starts_with("//!")
        })
        .map(|p| relative(&p))
        .collect();
    fail_with("files that do not open with a `//!` line", &offenders);
}

#[test]
fn no_rust_file_is_over_800_lines() {
    let offenders: Vec<String> = rust_files()
        .into_iter()
        .filter_map(|p| {
            let n = std::fs::read_to_string(&p).unwrap().lines().count();
            (n > MAX_LINES).then(|| format!("{} ({n} lines)", relative(&p)))
        })
        .collect();
    fail_with(
        &format!("files over {MAX_LINES} lines (split them by concept)"),
        &offenders,
    );
}

#[test]
fn unwrap_in_library_code_states_its_invariant() {
    let mut offenders = Vec::new();
    for path in rust_files() {
        if !relative(&path).starts_with("src") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        // A file that is itself a test module (`#![cfg(test)]`) is test code throughout.
        if text.lines().any(|l| l.trim() == "#![cfg(test)]") {
            continue;
        }
        for line_no in unjustified_unwraps(&text) {
            offenders.push(format!("{}:{line_no}", relative(&path)));
        }
    }
    fail_with(
        "`.unwrap()` outside tests without a comment (same line or the line above) stating \
         why it cannot fail; return an error instead if input can reach it",
        &offenders,
    );
}

#[test]
fn architecture_names_every_source_folder() {
    let doc = std::fs::read_to_string(root().join("ARCHITECTURE.md")).unwrap();
    let offenders: Vec<String> = walk(&root().join("src"), true)
        .into_iter()
        .map(|p| format!("{}/", relative(&p)))
        .filter(|folder| !doc.contains(folder.as_str()))
        .collect();
    fail_with(
        "folders under src/ that ARCHITECTURE.md does not name",
        &offenders,
    );
}

/// One line of source with string and character literals blanked out and comments removed,
/// and whether it holds a comment.
struct Line {
    code: String,
    has_comment: bool,
}

/// Splits Rust source into `Line`s: a small lexer that knows comments (line, nested block),
/// strings (escaped, raw with any number of `#`) and character literals versus lifetimes, so
/// braces and `.unwrap()` inside them are not mistaken for code.
fn lex(text: &str) -> Vec<Line> {
    enum State {
        Code,
        Block(usize),
        Str,
        Raw(usize),
    }
    let mut state = State::Code;
    let mut lines = Vec::new();
    for raw in text.lines() {
        let chars: Vec<char> = raw.chars().collect();
        let mut code = String::new();
        let mut has_comment = matches!(state, State::Block(_));
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let next = chars.get(i + 1).copied();
            match state {
                State::Block(depth) => {
                    if c == '*' && next == Some('/') {
                        state = if depth == 1 {
                            State::Code
                        } else {
                            State::Block(depth - 1)
                        };
                        i += 1;
                    } else if c == '/' && next == Some('*') {
                        state = State::Block(depth + 1);
                        i += 1;
                    }
                }
                State::Str => {
                    if c == '\\' {
                        i += 1;
                    } else if c == '"' {
                        code.push('"');
                        state = State::Code;
                    }
                }
                State::Raw(hashes) => {
                    let closes = c == '"'
                        && chars.len() >= i + 1 + hashes
                        && chars[i + 1..i + 1 + hashes].iter().all(|&h| h == '#');
                    if closes {
                        code.push('"');
                        i += hashes;
                        state = State::Code;
                    }
                }
                State::Code => {
                    if c == '/' && next == Some('/') {
                        has_comment = true;
                        break;
                    } else if c == '/' && next == Some('*') {
                        has_comment = true;
                        state = State::Block(1);
                        i += 1;
                    } else if c == '"' {
                        code.push('"');
                        state = State::Str;
                    } else if c == 'r'
                        && !prev_ident_except_b(&chars, i)
                        && matches!(next, Some('"') | Some('#'))
                    {
                        let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
                        if chars.get(i + 1 + hashes) == Some(&'"') {
                            code.push('"');
                            state = State::Raw(hashes);
                            i += 1 + hashes;
                        } else {
                            code.push(c);
                        }
                    } else if c == '\'' && !prev_ident_except_b(&chars, i) {
                        // A character literal ('x', '\n', '\u{7f}') or a lifetime ('a).
                        if next == Some('\\') {
                            let end = chars[i + 2..].iter().position(|&q| q == '\'');
                            i += end.map_or(chars.len(), |e| e + 2);
                            code.push_str("' '");
                        } else if chars.get(i + 2) == Some(&'\'') {
                            i += 2;
                            code.push_str("' '");
                        } else {
                            code.push(c);
                        }
                    } else {
                        code.push(c);
                    }
                }
            }
            i += 1;
        }
        lines.push(Line { code, has_comment });
    }
    lines
}

/// Whether the character before `i` continues an identifier, `b` of a byte string excepted.
fn prev_ident_except_b(chars: &[char], i: usize) -> bool {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    match i.checked_sub(1).map(|j| chars[j]) {
        Some('b') => i >= 2 && ident(chars[i - 2]),
        Some(c) => ident(c),
        None => false,
    }
}

/// 1-based numbers of the lines with an `.unwrap()` outside `#[cfg(test)]` items and without a
/// comment on the line or the line above.
fn unjustified_unwraps(text: &str) -> Vec<usize> {
    let lines = lex(text);
    let mut out = Vec::new();
    let mut depth = 0usize;
    // After `#[cfg(test)]`: waiting for the item's `{` (or `;` for an item without a body).
    let mut pending_test = false;
    // The depth at which the current test item's body closes.
    let mut test_depth: Option<usize> = None;
    for (idx, line) in lines.iter().enumerate() {
        let in_test_at_start = test_depth.is_some() || pending_test;
        if line.code.trim() == "#[cfg(test)]" && test_depth.is_none() {
            pending_test = true;
        }
        for c in line.code.chars() {
            match c {
                '{' => {
                    if pending_test {
                        test_depth = Some(depth);
                        pending_test = false;
                    }
                    depth += 1;
                }
                '}' => {
                    depth = depth.saturating_sub(1);
                    if test_depth == Some(depth) {
                        test_depth = None;
                    }
                }
                ';' if pending_test && test_depth.is_none() => pending_test = false,
                _ => {}
            }
        }
        let in_test = in_test_at_start || test_depth.is_some();
        if in_test || !line.code.contains(".unwrap()") {
            continue;
        }
        let above = idx.checked_sub(1).map(|j| &lines[j]);
        let commented =
            line.has_comment || above.is_some_and(|a| a.has_comment && a.code.trim().is_empty());
        if !commented {
            out.push(idx + 1);
        }
    }
    out
}

#[test]
fn the_unwrap_rule_sees_through_strings_comments_and_test_modules() {
    let src = r####"//! x
fn a() {
    let s = "not code: .unwrap() {";
    let r = r#"raw " .unwrap() }"#;
    let c = '{';
    let b = b'}';
    let l: &'static str = "";
    x.unwrap(); // the table is never empty
    // Checked by `parse` above.
    y.unwrap();
    z.unwrap();
    /* block .unwrap() */
}
#[cfg(test)]
use std::fmt;
fn b() { w.unwrap() }
#[cfg(test)]
mod tests {
    fn t() { q.unwrap(); let s = "}"; }
}
fn c() { v.unwrap() }
"####;
    assert_eq!(unjustified_unwraps(src), vec![11, 16, 21]);
}
