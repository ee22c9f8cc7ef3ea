//! Manifests: the small JSON file under `manifests/<name>/<tag>` that makes a model out of
//! blobs, laid out like Ollama's (an OCI image manifest: a config blob plus layers, each a
//! media type, a digest and a size). The manifest is written last, atomically, so a model is
//! visible exactly when all its blobs are.

use serde::{Deserialize, Serialize};

use super::blob::Digest;
use crate::{Error, Result};

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.docker.container.image.v1+json";

/// What a layer holds. Unknown media types are kept as they are and ignored, so a manifest
/// written by a newer Hearth still loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// The GGUF file.
    Model,
    /// A Jinja chat template that replaces the GGUF's own.
    Template,
    /// Generation parameters, a JSON object (`{"temperature": 0.7, "stop": ["..."]}`).
    Params,
    /// The default system prompt.
    System,
    /// One license text; a model may have several.
    License,
    /// Conversation to start from, a JSON array of `{"role", "content"}`.
    Messages,
    /// An adapter GGUF (`ADAPTER`: LoRA, prefix or bottleneck) applied when the model runs;
    /// a model may have several, applied in order.
    Adapter,
}

impl LayerKind {
    pub const ALL: [LayerKind; 7] = [
        LayerKind::Model,
        LayerKind::Template,
        LayerKind::Params,
        LayerKind::System,
        LayerKind::License,
        LayerKind::Messages,
        LayerKind::Adapter,
    ];

    pub fn media_type(self) -> &'static str {
        match self {
            LayerKind::Model => "application/vnd.hearth.image.model",
            LayerKind::Template => "application/vnd.hearth.image.template",
            LayerKind::Params => "application/vnd.hearth.image.params",
            LayerKind::System => "application/vnd.hearth.image.system",
            LayerKind::License => "application/vnd.hearth.image.license",
            LayerKind::Messages => "application/vnd.hearth.image.messages",
            LayerKind::Adapter => "application/vnd.hearth.image.adapter",
        }
    }

    pub fn from_media_type(s: &str) -> Option<LayerKind> {
        LayerKind::ALL.into_iter().find(|k| k.media_type() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
}

impl Layer {
    pub fn new(kind: LayerKind, digest: Digest, size: u64) -> Layer {
        Layer {
            media_type: kind.media_type().to_string(),
            digest,
            size,
        }
    }

    pub fn kind(&self) -> Option<LayerKind> {
        LayerKind::from_media_type(&self.media_type)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    pub config: Layer,
    pub layers: Vec<Layer>,
}

impl Manifest {
    pub fn new(config: Layer, layers: Vec<Layer>) -> Manifest {
        Manifest {
            schema_version: 2,
            media_type: MANIFEST_MEDIA_TYPE.to_string(),
            config,
            layers,
        }
    }

    pub fn parse(bytes: &[u8], what: &str) -> Result<Manifest> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| {
            Error::Store(format!(
                "the manifest of {what} is not valid ({e}); remove it with `hearth rm {what}` \
                 and pull or create it again"
            ))
        })?;
        if m.layers_of(LayerKind::Model).count() != 1 {
            return Err(Error::Store(format!(
                "the manifest of {what} must name exactly one model layer; remove it with \
                 `hearth rm {what}` and pull or create it again"
            )));
        }
        Ok(m)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serialising plain structs of strings and integers cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    pub fn layers_of(&self, kind: LayerKind) -> impl Iterator<Item = &Layer> {
        self.layers.iter().filter(move |l| l.kind() == Some(kind))
    }

    /// The config blob and every layer: all the blobs this manifest keeps alive.
    pub fn blobs(&self) -> impl Iterator<Item = &Layer> {
        std::iter::once(&self.config).chain(&self.layers)
    }

    /// Total bytes of all blobs, as `hearth list` shows it.
    pub fn total_size(&self) -> u64 {
        self.blobs().map(|l| l.size).sum()
    }
}

/// The config blob: what kind of model this is, in Ollama's field names, so listing models
/// needs no GGUF parsing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ModelConfigBlob {
    pub model_format: String,
    pub model_family: String,
    pub parameter_size: String,
    pub quantization_level: String,
}
