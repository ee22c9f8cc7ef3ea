//! `create`: builds a model from a parsed Modelfile. `FROM` names either a model already in
//! the store (its layers are inherited, the Modelfile's instructions override them) or a GGUF
//! file, which is validated and streamed through the hasher into a new blob. `ADAPTER` files
//! (checked to be adapters for the model's architecture) become adapter layers, after the
//! base model's own. The manifest is written last.

use std::fs::File;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use super::manifest::{Layer, LayerKind, Manifest};
use super::{copy_with_progress, hash_file, params_to_json, Digest, ModelInfo, StoredModel};
use super::{AdapterLine, ModelName, Modelfile, Store};
use crate::gguf::GgufFile;
use crate::{Error, Result};

/// Rewrites a GGUF file (`source`, `destination`): a quantizer, for `create_converted`.
pub type ModelConverter = dyn Fn(&Path, &Path) -> Result<()>;

impl Store {
    /// Creates (or replaces) `name` from `modelfile`; a relative `FROM` path is taken relative
    /// to `base_dir` (the Modelfile's directory). Returns the new manifest's digest.
    pub fn create(
        &self,
        name: &ModelName,
        modelfile: &Modelfile,
        base_dir: &Path,
        progress: &ProgressBar,
    ) -> Result<Digest> {
        self.create_converted(name, modelfile, base_dir, progress, None)
    }

    /// `create`, with the model file first rewritten by `convert(source, destination)` (a
    /// quantizer) when one is given: the source is the `FROM` file or the base model's blob,
    /// the destination a temp file inside the store that is imported as the new model blob
    /// and then deleted. The manifest is still written last, so a killed conversion leaves
    /// no model under `name`.
    pub fn create_converted(
        &self,
        name: &ModelName,
        modelfile: &Modelfile,
        base_dir: &Path,
        progress: &ProgressBar,
        convert: Option<&ModelConverter>,
    ) -> Result<Digest> {
        let _lock = self.lock_shared()?;
        let base = match modelfile.from.parse::<ModelName>() {
            Ok(base) if self.exists(&base) => Some(self.load(&base)?),
            _ => None,
        };
        let (model_layer, config) = match (&base, convert) {
            (Some(base), None) => {
                let layer = base
                    .manifest
                    .layers_of(LayerKind::Model)
                    .next()
                    .cloned()
                    .ok_or_else(|| Error::Store(format!("{} has no model layer", base.name)))?;
                (layer, base.manifest.config.clone())
            }
            (None, None) => {
                let path = gguf_path(modelfile, base_dir)?;
                self.import_gguf(&path, modelfile.from_line, progress)?
            }
            (_, Some(convert)) => {
                let source = match &base {
                    Some(base) => base.model_path.clone(),
                    None => gguf_path(modelfile, base_dir)?,
                };
                let tmp = tempfile::Builder::new()
                    .prefix(super::PARTIAL_PREFIX)
                    .tempdir_in(self.blobs_dir())
                    .map_err(|e| Error::io(self.blobs_dir(), e))?;
                let converted = tmp.path().join("model.gguf");
                convert(&source, &converted)?;
                self.import_gguf(&converted, modelfile.from_line, progress)?
            }
        };

        let model_arch = {
            let path = match &base {
                Some(b) => b.model_path.clone(),
                None => gguf_path(modelfile, base_dir)?,
            };
            let f = GgufFile::open(&path)?;
            f.architecture()?.to_string()
        };
        let mut layers = vec![model_layer];
        if let Some(b) = &base {
            layers.extend(b.manifest.layers_of(LayerKind::Adapter).cloned());
        }
        for a in &modelfile.adapters {
            layers.push(self.import_adapter(a, base_dir, &model_arch)?);
        }
        let inherited = |f: fn(&StoredModel) -> Option<String>| base.as_ref().and_then(f);
        let template = modelfile
            .template
            .clone()
            .or_else(|| inherited(|b| b.template.clone()));
        let system = modelfile
            .system
            .clone()
            .or_else(|| inherited(|b| b.system.clone()));
        if let Some(t) = template {
            layers.push(self.text_layer(LayerKind::Template, &t)?);
        }
        if let Some(s) = system {
            layers.push(self.text_layer(LayerKind::System, &s)?);
        }

        // A parameter named in the Modelfile replaces every inherited value of that name.
        let mut params: Vec<(String, String)> = base
            .as_ref()
            .map(|b| b.parameters.clone())
            .unwrap_or_default();
        params.retain(|(n, _)| !modelfile.parameters.iter().any(|p| p.name == *n));
        params.extend(
            modelfile
                .parameters
                .iter()
                .map(|p| (p.name.clone(), p.value.clone())),
        );
        if !params.is_empty() {
            let (d, n) = self.write_blob(&params_to_json(&params))?;
            layers.push(Layer::new(LayerKind::Params, d, n));
        }

        let licenses = base.iter().flat_map(|b| b.licenses.iter());
        for license in licenses.chain(&modelfile.licenses) {
            layers.push(self.text_layer(LayerKind::License, license)?);
        }

        let messages = match (&base, modelfile.messages.is_empty()) {
            (Some(b), true) => b.messages.clone(),
            _ => modelfile.messages.clone(),
        };
        if !messages.is_empty() {
            let bytes = serde_json::to_vec(&messages).unwrap_or_default();
            let (d, n) = self.write_blob(&bytes)?;
            layers.push(Layer::new(LayerKind::Messages, d, n));
        }

        let manifest = Manifest::new(config, layers);
        self.write_manifest(name, &manifest)?;
        Ok(Digest::of(&manifest.to_bytes()))
    }

    /// Checks an `ADAPTER` file (an adapter GGUF for `arch`) and stores it as a blob.
    fn import_adapter(&self, a: &AdapterLine, base_dir: &Path, arch: &str) -> Result<Layer> {
        let path: PathBuf = base_dir.join(&a.path).components().collect();
        let bad = |m: String| {
            Error::Store(format!(
                "Modelfile line {}: ADAPTER {}: {m}",
                a.line, a.path
            ))
        };
        if !path.is_file() {
            return Err(bad(format!("there is no file {}", path.display())));
        }
        crate::train::adapter_file::load_method(&path).map_err(|e| bad(e.to_string()))?;
        let f = GgufFile::open(&path).map_err(|e| bad(e.to_string()))?;
        if let Some(other) = f.architecture().ok().filter(|&x| x != arch) {
            return Err(bad(format!(
                "an adapter for {other}, not for this {arch} model"
            )));
        }
        drop(f);
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let mut writer = self.blob_writer()?;
        copy_with_progress(&mut file, &mut writer, &mut |_| {}).map_err(|e| Error::io(&path, e))?;
        let (digest, size) = writer.finish(None)?;
        Ok(Layer::new(LayerKind::Adapter, digest, size))
    }

    fn text_layer(&self, kind: LayerKind, text: &str) -> Result<Layer> {
        let (digest, size) = self.write_blob(text.as_bytes())?;
        Ok(Layer::new(kind, digest, size))
    }

    /// Validates the GGUF at `path` and stores it as a blob; returns its model layer and the
    /// config layer describing it.
    fn import_gguf(
        &self,
        path: &Path,
        from_line: usize,
        progress: &ProgressBar,
    ) -> Result<(Layer, Layer)> {
        let gguf = GgufFile::open(path).map_err(|e| {
            Error::Store(format!(
                "Modelfile line {from_line}: FROM {}: not a usable GGUF file: {e}",
                path.display()
            ))
        })?;
        let info = ModelInfo::from_gguf(&gguf)?;
        drop(gguf);

        // `FROM` a blob of this store (what `show --modelfile` prints): check it, copy nothing.
        let in_store = path.parent() == Some(self.blobs_dir().as_path());
        let blob_digest = path
            .file_name()
            .and_then(|s| s.to_str())
            .and_then(|s| s.parse::<Digest>().ok());
        let (digest, size) = match blob_digest.filter(|_| in_store) {
            Some(want) => {
                let (digest, size) = hash_file(path)?;
                if digest != want {
                    return Err(Error::Store(format!(
                        "blob {} is corrupt (its sha256 is {})",
                        path.display(),
                        digest.hex()
                    )));
                }
                (digest, size)
            }
            None => {
                let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                progress.set_length(len);
                let mut writer = self.blob_writer()?;
                copy_with_progress(&mut file, &mut writer, &mut |n| progress.inc(n))
                    .map_err(|e| Error::io(path, e))?;
                progress.finish();
                writer.finish(None)?
            }
        };
        let config = self.write_config(&info)?;
        Ok((Layer::new(LayerKind::Model, digest, size), config))
    }
}

/// Resolves `FROM` as a file path, with a message covering both readings when it is neither.
fn gguf_path(modelfile: &Modelfile, base_dir: &Path) -> Result<PathBuf> {
    let from = Path::new(&modelfile.from);
    // Collecting the components drops `.` ones: `./m.gguf` is reported as `dir/m.gguf`.
    let path: PathBuf = base_dir.join(from).components().collect();
    if path.is_file() {
        return Ok(path);
    }
    Err(Error::Store(format!(
        "Modelfile line {}: FROM {}: there is no file {} and no model named {:?} in the store \
         (`hearth list` shows the models)",
        modelfile.from_line,
        modelfile.from,
        path.display(),
        modelfile.from
    )))
}
