//! Blob checks, in two strengths. A blob's sha256 is established when it is written (`pull`
//! compares the download with the digest it expects, `create` streams the file through the
//! hasher and re-hashes a `FROM` that is already a blob of the store) and re-established on
//! demand by `hearth verify` (`Store::verify`). Loading a model, `cp` and `create FROM` a model
//! only check that each blob is present with its recorded size (`Store::check_present`), so
//! `hearth run` never reads a multi-gigabyte GGUF just to hash it.

use std::io::ErrorKind;
use std::path::PathBuf;

use super::blob::hash_file_with_progress;
use super::manifest::{Layer, Manifest};
use super::{Digest, ModelName, Store};
use crate::{Error, Result};

/// What is wrong with one blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobProblem {
    Missing,
    /// Its length differs from the manifest's size.
    WrongSize {
        size: u64,
    },
    /// Its length is right but its bytes are not (`hearth verify` only).
    WrongDigest {
        digest: Digest,
    },
}

/// One blob of a model and what, if anything, is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobCheck {
    pub layer: Layer,
    pub path: PathBuf,
    pub problem: Option<BlobProblem>,
}

impl BlobCheck {
    /// The problem in words, naming the blob.
    pub fn describe(&self) -> String {
        let path = self.path.display();
        match &self.problem {
            None => format!("{path}: ok"),
            Some(BlobProblem::Missing) => format!("{path} is missing"),
            Some(BlobProblem::WrongSize { size }) => format!(
                "{path} has {size} bytes but should have {} (sha256 {})",
                self.layer.size,
                self.layer.digest.hex()
            ),
            Some(BlobProblem::WrongDigest { digest }) => format!(
                "{path} has sha256 {} but should have {}",
                digest.hex(),
                self.layer.digest.hex()
            ),
        }
    }
}

/// What `Store::verify` found for one model: every blob, the config blob first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    pub name: ModelName,
    pub blobs: Vec<BlobCheck>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.blobs.iter().all(|b| b.problem.is_none())
    }

    /// Bytes the model's blobs should hold.
    pub fn n_bytes(&self) -> u64 {
        self.blobs.iter().map(|b| b.layer.size).sum()
    }
}

impl Store {
    /// Re-hashes every blob of `name` and reports each one's state; `on_bytes` is called with
    /// the length of each chunk hashed (for a progress bar). A problem with a blob is part of
    /// the report, not an error; errors are a missing model or an unreadable file.
    pub fn verify(&self, name: &ModelName, on_bytes: &mut dyn FnMut(u64)) -> Result<VerifyReport> {
        let (manifest, _) = self.manifest(name)?;
        let mut blobs = Vec::new();
        for layer in manifest.blobs() {
            let path = self.blob_path(&layer.digest);
            let problem = match self.size_problem(layer)? {
                Some(problem) => Some(problem),
                None => {
                    let (digest, _) = hash_file_with_progress(&path, on_bytes)?;
                    (digest != layer.digest).then_some(BlobProblem::WrongDigest { digest })
                }
            };
            blobs.push(BlobCheck {
                layer: layer.clone(),
                path,
                problem,
            });
        }
        Ok(VerifyReport {
            name: name.clone(),
            blobs,
        })
    }

    /// Checks that every blob `manifest` names is present with its recorded size, without
    /// reading it: the check for loads and for commands that name blobs without writing them.
    pub(super) fn check_present(&self, name: &ModelName, manifest: &Manifest) -> Result<()> {
        for layer in manifest.blobs() {
            let check = BlobCheck {
                layer: layer.clone(),
                path: self.blob_path(&layer.digest),
                problem: self.size_problem(layer)?,
            };
            let what = match check.problem {
                None => continue,
                Some(BlobProblem::Missing) => "incomplete",
                Some(_) => "corrupt",
            };
            return Err(Error::Store(format!(
                "{name} is {what}: its blob {}; remove it with `hearth rm {name}` and pull or \
                 create it again",
                check.describe()
            )));
        }
        Ok(())
    }

    /// A missing blob or one of the wrong length.
    fn size_problem(&self, layer: &Layer) -> Result<Option<BlobProblem>> {
        let path = self.blob_path(&layer.digest);
        match std::fs::metadata(&path) {
            Ok(m) if m.len() == layer.size => Ok(None),
            Ok(m) => Ok(Some(BlobProblem::WrongSize { size: m.len() })),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(Some(BlobProblem::Missing)),
            Err(e) => Err(Error::io(&path, e)),
        }
    }

    /// Checks the bytes of a blob that was read whole into memory (text, parameters,
    /// messages: a few kilobytes, so hashing them costs nothing).
    pub(super) fn check_read(&self, name: &ModelName, digest: &Digest, bytes: &[u8]) -> Result<()> {
        let got = Digest::of(bytes);
        if got == *digest {
            return Ok(());
        }
        Err(Error::Store(format!(
            "{name} is corrupt: blob {} has sha256 {} but should have {}; remove it with \
             `hearth rm {name}` and pull or create it again",
            self.blob_path(digest).display(),
            got.hex(),
            digest.hex()
        )))
    }
}
