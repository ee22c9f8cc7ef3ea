//! Generation options by Ollama's parameter names. `PARAMETERS` is the one table of them: a row
//! per parameter says its name, what it means, how a text value is checked and stored, and how
//! the value in effect prints. The Modelfile parser, `/set parameter`, the `run` flags, `show`
//! and the stored JSON all derive from it; adding a parameter is one row (and its field).
//!
//! It knows nothing of models, stores or the command line.

use crate::sample::SamplerOptions;
use crate::{Error, Result};

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateOptions {
    pub sampler: SamplerOptions,
    /// `None`: until end of generation or a full context.
    pub num_predict: Option<usize>,
    pub stop: Vec<String>,
    /// `None`: the engine's default.
    pub num_ctx: Option<usize>,
    /// Prompt tokens kept when a full context shifts; `None`: the engine's default.
    pub num_keep: Option<usize>,
    /// Generation past `num_ctx` by context shift (keep `num_keep`, drop the oldest half of
    /// the rest); off: a full context ends the answer.
    pub context_shift: bool,
    /// StreamingLLM past `num_ctx`: the first `attention_sinks` tokens and the last
    /// `sliding_window` stay in the cache, those between are evicted as it fills (both or
    /// neither).
    pub attention_sinks: Option<usize>,
    pub sliding_window: Option<usize>,
}

/// How `hearth run` offers a parameter on its command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    /// Only through a Modelfile, `/set parameter` or request options.
    None,
    /// `--name-with-dashes VALUE`.
    Long,
    /// The long flag and a one-letter short form.
    Short(char),
}

/// What a parameter's value is, for formats that type their values (the stored JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    Number,
    Text,
}

/// One generation parameter: a row of `PARAMETERS`.
pub struct ParameterSpec {
    /// Ollama's name (`top_k`).
    pub name: &'static str,
    /// One line for help texts.
    pub help: &'static str,
    /// The placeholder in help texts (`N`, `P`, `TEXT`).
    pub value_name: &'static str,
    pub flag: Flag,
    pub kind: ValueKind,
    /// Each value adds to the list instead of replacing it (`stop`).
    pub repeated: bool,
    /// Checks a value and stores it; the error says what the parameter accepts.
    set: fn(&mut GenerateOptions, &str) -> Result<(), &'static str>,
    /// The values in effect, as text; empty when the parameter has its default.
    get: fn(&GenerateOptions) -> Vec<String>,
}

impl ParameterSpec {
    /// The long command-line flag: the name with dashes (`top-k`).
    pub fn flag_name(&self) -> String {
        self.name.replace('_', "-")
    }
}

/// Every parameter Hearth accepts, in the order `show` prints them.
pub const PARAMETERS: &[ParameterSpec] = &[
    ParameterSpec {
        name: "num_ctx",
        help: "Context length in tokens",
        value_name: "N",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            let n: usize = number(v, "expected a whole number of tokens, at least 1")?;
            o.num_ctx = Some(check(
                n,
                n >= 1,
                "expected a whole number of tokens, at least 1",
            )?);
            Ok(())
        },
        get: |o| shown(o.num_ctx),
    },
    ParameterSpec {
        name: "num_predict",
        help: "Generate at most N tokens (-1: until the model stops or the context is full)",
        value_name: "N",
        flag: Flag::Short('n'),
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            let n: i64 = number(v, "expected a whole number of tokens (-1: no limit)")?;
            o.num_predict = usize::try_from(n).ok();
            Ok(())
        },
        get: |o| shown(o.num_predict),
    },
    ParameterSpec {
        name: "num_keep",
        help: "Prompt tokens kept when a full context shifts",
        value_name: "N",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            o.num_keep = Some(number(v, "expected a whole number of tokens, 0 or more")?);
            Ok(())
        },
        get: |o| shown(o.num_keep),
    },
    ParameterSpec {
        name: "context_shift",
        help: "Go past num_ctx by dropping the oldest half of the tokens after num_keep",
        value_name: "BOOL",
        flag: Flag::None,
        kind: ValueKind::Text,
        repeated: false,
        set: |o, v| {
            o.context_shift = match v {
                "true" => true,
                "false" => false,
                _ => return Err("expected true or false"),
            };
            Ok(())
        },
        get: |o| match o.context_shift {
            true => vec!["true".into()],
            false => Vec::new(),
        },
    },
    ParameterSpec {
        name: "attention_sinks",
        help: "StreamingLLM: tokens kept at the start past num_ctx (with sliding_window)",
        value_name: "N",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            o.attention_sinks = Some(number(v, "expected a whole number of tokens, 0 or more")?);
            Ok(())
        },
        get: |o| shown(o.attention_sinks),
    },
    ParameterSpec {
        name: "sliding_window",
        help: "StreamingLLM: latest tokens kept past num_ctx (with attention_sinks)",
        value_name: "N",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            o.sliding_window = Some(number(v, "expected a whole number of tokens, 1 or more")?);
            Ok(())
        },
        get: |o| shown(o.sliding_window),
    },
    ParameterSpec {
        name: "temperature",
        help: "Sampling temperature; 0 is greedy",
        value_name: "T",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            const WANT: &str = "expected a number, 0 or more (0 is greedy)";
            let x: f32 = number(v, WANT)?;
            o.sampler.temperature = check(x, x >= 0.0 && x.is_finite(), WANT)?;
            Ok(())
        },
        get: |o| changed(o.sampler.temperature, SamplerOptions::default().temperature),
    },
    ParameterSpec {
        name: "top_k",
        help: "Sample from the K most likely tokens",
        value_name: "K",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            o.sampler.top_k = number(v, "expected a whole number, 0 or more (0: off)")?;
            Ok(())
        },
        get: |o| changed(o.sampler.top_k, SamplerOptions::default().top_k),
    },
    ParameterSpec {
        name: "top_p",
        help: "Nucleus sampling: the smallest set of tokens with probability mass P",
        value_name: "P",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            const WANT: &str = "expected a number above 0 and at most 1 (1: off)";
            let x: f32 = number(v, WANT)?;
            o.sampler.top_p = check(x, x > 0.0 && x <= 1.0, WANT)?;
            Ok(())
        },
        get: |o| changed(o.sampler.top_p, SamplerOptions::default().top_p),
    },
    ParameterSpec {
        name: "min_p",
        help: "Drop tokens less likely than P times the most likely one",
        value_name: "P",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            const WANT: &str = "expected a number from 0 to 1 (0: off)";
            let x: f32 = number(v, WANT)?;
            o.sampler.min_p = check(x, (0.0..=1.0).contains(&x), WANT)?;
            Ok(())
        },
        get: |o| changed(o.sampler.min_p, SamplerOptions::default().min_p),
    },
    ParameterSpec {
        name: "repeat_penalty",
        help: "Penalise tokens seen in the last repeat_last_n tokens (1.0: off)",
        value_name: "X",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            const WANT: &str = "expected a number above 0 (1: off)";
            let x: f32 = number(v, WANT)?;
            o.sampler.repeat_penalty = check(x, x > 0.0 && x.is_finite(), WANT)?;
            Ok(())
        },
        get: |o| {
            changed(
                o.sampler.repeat_penalty,
                SamplerOptions::default().repeat_penalty,
            )
        },
    },
    ParameterSpec {
        name: "repeat_last_n",
        help: "How many recent tokens the penalties look at",
        value_name: "N",
        flag: Flag::None,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            o.sampler.repeat_last_n = number(v, "expected a whole number of tokens, 0 or more")?;
            Ok(())
        },
        get: |o| {
            changed(
                o.sampler.repeat_last_n,
                SamplerOptions::default().repeat_last_n,
            )
        },
    },
    ParameterSpec {
        name: "presence_penalty",
        help: "Subtracted from the logit of every token seen (0: off)",
        value_name: "X",
        flag: Flag::None,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            const WANT: &str = "expected a number (0: off)";
            let x: f32 = number(v, WANT)?;
            o.sampler.presence_penalty = check(x, x.is_finite(), WANT)?;
            Ok(())
        },
        get: |o| {
            let default = SamplerOptions::default().presence_penalty;
            changed(o.sampler.presence_penalty, default)
        },
    },
    ParameterSpec {
        name: "frequency_penalty",
        help: "Subtracted from a token's logit once per time it was seen (0: off)",
        value_name: "X",
        flag: Flag::None,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            const WANT: &str = "expected a number (0: off)";
            let x: f32 = number(v, WANT)?;
            o.sampler.frequency_penalty = check(x, x.is_finite(), WANT)?;
            Ok(())
        },
        get: |o| {
            let default = SamplerOptions::default().frequency_penalty;
            changed(o.sampler.frequency_penalty, default)
        },
    },
    ParameterSpec {
        name: "seed",
        help: "Random seed, for reproducible sampling (-1: a new one each time)",
        value_name: "N",
        flag: Flag::Long,
        kind: ValueKind::Number,
        repeated: false,
        set: |o, v| {
            let n: i64 = number(v, "expected a whole number (-1: a random seed)")?;
            o.sampler.seed = u64::try_from(n).ok();
            Ok(())
        },
        get: |o| shown(o.sampler.seed),
    },
    ParameterSpec {
        name: "stop",
        help: "Stop when the answer contains this text (repeatable)",
        value_name: "TEXT",
        flag: Flag::Long,
        kind: ValueKind::Text,
        repeated: true,
        set: |o, v| {
            // Whitespace is meaningful in a stop string ("\n" is a common one): only a pair
            // of surrounding quotes is removed.
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v);
            if v.is_empty() {
                return Err("expected a non-empty string");
            }
            o.stop.push(v.to_string());
            Ok(())
        },
        get: |o| o.stop.iter().map(|s| format!("{s:?}")).collect(),
    },
];

/// The row of the parameter called `name`.
pub fn parameter(name: &str) -> Option<&'static ParameterSpec> {
    PARAMETERS.iter().find(|p| p.name == name)
}

/// Every parameter name, comma-separated (for messages).
pub fn parameter_names() -> String {
    let names: Vec<&str> = PARAMETERS.iter().map(|p| p.name).collect();
    names.join(", ")
}

/// Parses a number; surrounding whitespace is allowed.
fn number<T: std::str::FromStr>(value: &str, want: &'static str) -> Result<T, &'static str> {
    value.trim().parse().map_err(|_| want)
}

fn check<T>(x: T, ok: bool, want: &'static str) -> Result<T, &'static str> {
    if ok {
        Ok(x)
    } else {
        Err(want)
    }
}

fn shown<T: ToString>(x: Option<T>) -> Vec<String> {
    x.iter().map(T::to_string).collect()
}

fn changed<T: PartialEq + ToString>(x: T, default: T) -> Vec<String> {
    if x == default {
        Vec::new()
    } else {
        vec![x.to_string()]
    }
}

impl GenerateOptions {
    /// Sets a parameter by its Ollama name from text (Modelfile `PARAMETER`, `/set parameter`,
    /// a flag). `stop` appends; `num_predict` -1 means unlimited. A rejected value leaves the
    /// options as they were.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let spec = parameter(name).ok_or_else(|| Error::UnknownParameter {
            name: name.to_string(),
        })?;
        (spec.set)(self, value).map_err(|reason| Error::InvalidParameter {
            name: spec.name,
            value: value.to_string(),
            reason,
        })
    }

    /// Sets every `(name, value)` pair in order.
    pub fn apply(&mut self, pairs: &[(String, String)]) -> Result<()> {
        pairs
            .iter()
            .try_for_each(|(name, value)| self.set(name, value))
    }

    /// The parameters that differ from the defaults, as `(name, value)` text pairs.
    pub fn to_pairs(&self) -> Vec<(String, String)> {
        PARAMETERS
            .iter()
            .flat_map(|p| (p.get)(self).into_iter().map(|v| (p.name.to_string(), v)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_ollama_parameter_names() {
        let mut o = GenerateOptions::default();
        o.set("temperature", "0").unwrap();
        o.set("num_predict", "-1").unwrap();
        o.set("stop", "\"<|im_end|>\"").unwrap();
        o.set("stop", "\n").unwrap();
        o.set("seed", "7").unwrap();
        o.set("num_keep", "5").unwrap();
        assert!(o.sampler.is_greedy());
        assert_eq!(o.num_predict, None);
        assert_eq!(o.num_keep, Some(5));
        assert_eq!(o.stop, vec!["<|im_end|>", "\n"]);
        assert!(o.set("temperature", "hot").is_err());
        let err = o.set("top_p", "1.5").unwrap_err().to_string();
        assert!(err.contains("top_p") && err.contains("at most 1"), "{err}");
        assert_eq!(
            o.sampler.top_p,
            SamplerOptions::default().top_p,
            "a rejected value is not kept"
        );
        let err = o.set("nonsense", "1").unwrap_err().to_string();
        assert!(err.contains("num_keep") && err.contains("stop"), "{err}");
        assert!(o
            .to_pairs()
            .contains(&("seed".to_string(), "7".to_string())));
    }

    #[test]
    fn every_parameter_round_trips_through_its_printed_value() {
        // A value that differs from the default for each row; what `to_pairs` prints for it
        // must set the same options again (show's output is valid Modelfile input).
        let samples = [
            ("num_ctx", "2048"),
            ("num_predict", "64"),
            ("num_keep", "4"),
            ("context_shift", "true"),
            ("attention_sinks", "4"),
            ("sliding_window", "256"),
            ("temperature", "0.25"),
            ("top_k", "7"),
            ("top_p", "0.5"),
            ("min_p", "0.05"),
            ("repeat_penalty", "1.1"),
            ("repeat_last_n", "32"),
            ("presence_penalty", "0.5"),
            ("frequency_penalty", "-0.5"),
            ("seed", "42"),
            ("stop", "END"),
        ];
        assert_eq!(samples.len(), PARAMETERS.len());
        for (name, value) in samples {
            let mut o = GenerateOptions::default();
            o.set(name, value).unwrap();
            let pairs = o.to_pairs();
            assert_eq!(pairs.len(), 1, "{name}: {pairs:?}");
            assert_eq!(pairs[0].0, name);
            let mut again = GenerateOptions::default();
            again.apply(&pairs).unwrap();
            assert_eq!(again, o, "{name}");
        }
        assert!(GenerateOptions::default().to_pairs().is_empty());
    }

    #[test]
    fn out_of_range_and_non_finite_values_are_rejected() {
        for (name, value) in [
            ("num_ctx", "0"),
            ("temperature", "-1"),
            ("temperature", "NaN"),
            ("top_p", "0"),
            ("min_p", "1.5"),
            ("repeat_penalty", "0"),
            ("presence_penalty", "inf"),
            ("num_keep", "-1"),
            ("stop", "\"\""),
        ] {
            let err = GenerateOptions::default().set(name, value).unwrap_err();
            assert!(
                matches!(err, Error::InvalidParameter { .. }),
                "{name} {value}: {err}"
            );
        }
    }
}
