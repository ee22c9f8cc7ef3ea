//! Content-addressed blobs: `blobs/sha256-<hex>`, named by the sha256 of their bytes. A blob
//! is written through `BlobWriter` (bytes stream through the hasher into a temp file in the
//! blobs directory, which is fsynced and renamed to its digest name), so a blob under its final
//! name is always complete; a killed writer leaves only a `.partial-*` file, which nothing
//! lists and garbage collection removes.

use std::fmt;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

/// Prefix of every temp file the store writes; names that start with it are never models.
pub const PARTIAL_PREFIX: &str = ".partial-";

/// A sha256 digest, written `sha256:<hex>` in manifests and `sha256-<hex>` as a file name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest([u8; 32]);

impl Digest {
    pub fn of(bytes: &[u8]) -> Digest {
        Digest(Sha256::digest(bytes).into())
    }

    pub fn hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The first 12 hex digits, as `hearth list` shows IDs.
    pub fn short(&self) -> String {
        self.hex()[..12].to_string()
    }

    pub fn file_name(&self) -> String {
        format!("sha256-{}", self.hex())
    }

    /// Parses a bare 64-digit hex string (the form MODELS.md gives).
    pub fn from_hex(hex: &str) -> Result<Digest> {
        let bad = || Error::Store(format!("{hex:?} is not a sha256 digest (64 hex digits)"));
        if hex.len() != 64 || !hex.is_ascii() {
            return Err(bad());
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
        }
        Ok(Digest(out))
    }
}

impl FromStr for Digest {
    type Err = Error;

    /// Parses `sha256:<hex>` (manifests) or `sha256-<hex>` (file names).
    fn from_str(s: &str) -> Result<Digest> {
        let hex = s
            .strip_prefix("sha256:")
            .or_else(|| s.strip_prefix("sha256-"))
            .ok_or_else(|| Error::Store(format!("{s:?} is not a sha256:<hex> digest")))?;
        Digest::from_hex(hex)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{}", self.hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Streams bytes into a new blob: hashed and counted as they are written to a temp file
/// beside the final blob.
pub struct BlobWriter {
    tmp: tempfile::NamedTempFile,
    hasher: Sha256,
    n_bytes: u64,
    blobs_dir: PathBuf,
}

impl BlobWriter {
    pub fn new(blobs_dir: &Path) -> Result<BlobWriter> {
        let tmp = temp_file(blobs_dir)?;
        Ok(BlobWriter {
            tmp,
            hasher: Sha256::new(),
            n_bytes: 0,
            blobs_dir: blobs_dir.to_path_buf(),
        })
    }

    pub fn n_bytes(&self) -> u64 {
        self.n_bytes
    }

    /// The digest of everything written so far.
    pub fn digest(&self) -> Digest {
        Digest(self.hasher.clone().finalize().into())
    }

    /// Fsyncs the temp file and renames it to its digest name. With `expected`, a different
    /// digest is an error and the temp file is deleted instead.
    pub fn finish(mut self, expected: Option<&Digest>) -> Result<(Digest, u64)> {
        let digest = self.digest();
        if let Some(want) = expected {
            if *want != digest {
                return Err(Error::Store(format!(
                    "checksum mismatch: expected {want}, got {digest}; the download is \
                     corrupt or not the file Hearth expects (nothing was stored)"
                )));
            }
        }
        let path = self.blobs_dir.join(digest.file_name());
        let tmp_path = self.tmp.path().to_path_buf();
        self.tmp.flush().map_err(|e| Error::io(&tmp_path, e))?;
        self.tmp
            .as_file()
            .sync_all()
            .map_err(|e| Error::io(&tmp_path, e))?;
        // Renaming over an existing blob of the same digest replaces identical bytes.
        self.tmp
            .persist(&path)
            .map_err(|e| Error::io(&path, e.error))?;
        Ok((digest, self.n_bytes))
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.tmp.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.n_bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.tmp.flush()
    }
}

/// A `.partial-*` temp file in `dir`, readable by all (as the renamed blob or manifest will
/// be; `tempfile`'s default is owner-only).
fn temp_file(dir: &Path) -> Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(PARTIAL_PREFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o644));
    }
    builder.tempfile_in(dir).map_err(|e| Error::io(dir, e))
}

/// Writes `bytes` to `path` through a fsynced temp file in the same directory and a rename.
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = temp_file(dir)?;
    tmp.write_all(bytes).map_err(|e| Error::io(path, e))?;
    tmp.as_file().sync_all().map_err(|e| Error::io(path, e))?;
    tmp.persist(path).map_err(|e| Error::io(path, e.error))?;
    Ok(())
}

/// Hashes a whole file by streaming it; returns the digest and the byte count.
pub fn hash_file(path: &Path) -> Result<(Digest, u64)> {
    hash_file_with_progress(path, &mut |_| {})
}

/// `hash_file`, calling `on_bytes` with the length of each chunk hashed.
pub fn hash_file_with_progress(
    path: &Path,
    on_bytes: &mut dyn FnMut(u64),
) -> Result<(Digest, u64)> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n_bytes = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        n_bytes += n as u64;
        on_bytes(n as u64);
    }
    Ok((Digest(hasher.finalize().into()), n_bytes))
}

/// Copies `reader` into `out` in large chunks, calling `on_chunk` with each chunk's length
/// (for a progress bar).
pub fn copy_with_progress(
    reader: &mut dyn Read,
    out: &mut dyn Write,
    on_chunk: &mut dyn FnMut(u64),
) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
        total += n as u64;
        on_chunk(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_round_trips_through_both_spellings() {
        let d = Digest::of(b"hello");
        assert_eq!(
            d.hex(),
            "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!(d.file_name().parse::<Digest>().unwrap(), d);
        assert_eq!(d.short(), "2cf24dba5fb0");
        assert!("sha256:xyz".parse::<Digest>().is_err());
        assert!("md5:00".parse::<Digest>().is_err());
    }

    #[test]
    fn blob_writer_names_the_blob_by_its_digest_and_checks_expected() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = BlobWriter::new(dir.path()).unwrap();
        w.write_all(b"hello").unwrap();
        let (d, n) = w.finish(None).unwrap();
        assert_eq!((d, n), (Digest::of(b"hello"), 5));
        assert_eq!(
            std::fs::read(dir.path().join(d.file_name())).unwrap(),
            b"hello"
        );

        let mut w = BlobWriter::new(dir.path()).unwrap();
        w.write_all(b"other").unwrap();
        assert!(w.finish(Some(&d)).is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(d.file_name())]);
    }
}
