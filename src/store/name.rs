//! Model names as users type them: `smollm2` is `smollm2:latest`, `gemma3:270m` names tag
//! `270m`. A name maps straight to a manifest path, so the rules here are what keep a name
//! from ever escaping the store's directory (no `/`, no leading `.`, no `..`).

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

pub const DEFAULT_TAG: &str = "latest";
const MAX_PART_LEN: usize = 80;

/// A validated `name:tag`. Comparisons are exact (case-sensitive), like the file names they
/// become.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelName {
    name: String,
    tag: String,
}

impl ModelName {
    pub fn new(name: &str, tag: &str) -> Result<Self> {
        check_part(name, "name", name)?;
        check_part(tag, "tag", name)?;
        Ok(ModelName {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }
}

impl FromStr for ModelName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.split_once(':') {
            Some((name, tag)) => ModelName::new(name, tag),
            None => ModelName::new(s, DEFAULT_TAG),
        }
    }
}

impl fmt::Display for ModelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

/// A part starts with a letter or digit and holds only letters, digits, `.`, `_` and `-`:
/// that excludes path separators, `..` and hidden (temp) files in one rule.
fn check_part(part: &str, what: &str, whole: &str) -> Result<()> {
    let ok_start = part
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_chars = part
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok_start && ok_chars && part.len() <= MAX_PART_LEN {
        return Ok(());
    }
    Err(Error::Store(format!(
        "invalid model {what} {part:?} in {whole:?}: a model is named NAME or NAME:TAG, each \
         part up to {MAX_PART_LEN} letters, digits, '.', '_' or '-', starting with a letter \
         or digit (e.g. smollm2, gemma3:270m)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_default_tag() {
        let n: ModelName = "smollm2".parse().unwrap();
        assert_eq!((n.name(), n.tag()), ("smollm2", "latest"));
        assert_eq!(n.to_string(), "smollm2:latest");
        let n: ModelName = "gemma3:270m".parse().unwrap();
        assert_eq!((n.name(), n.tag()), ("gemma3", "270m"));
    }

    #[test]
    fn rejects_names_that_could_escape_the_store() {
        for bad in [
            "", ":x", "a:", "../x", "a/b", ".hidden", "a:..", "a:b:c", "a b", "a:.x",
        ] {
            assert!(bad.parse::<ModelName>().is_err(), "{bad:?} was accepted");
        }
    }
}
