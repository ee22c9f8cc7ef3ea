//! Kill tests for the store (issue 14): `hearth create` is SIGKILLed at many points of its
//! work, and after every kill the store is consistent: every manifest names only complete
//! blobs whose bytes hash to their names, `hearth list` works, the next start removes the
//! temp files, and the next `create` completes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use hearth::gguf::{GgufWriter, Value};
use hearth::quant::QuantType;
use hearth::store::Store;

/// Kills that must land while the command is still running.
const KILL_POINTS: usize = 50;

fn hearth(models: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hearth"));
    c.env("HEARTH_MODELS", models).env_remove("HEARTH_DEVICE");
    c
}

/// The nano model with 16 MB of extra tensor data, so that a create spends long enough
/// copying and hashing for kills to land at many different points.
fn big_gguf(dir: &Path) -> PathBuf {
    let nano = hearth::gguf::GgufFile::open(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/nano/nano-llama.gguf"),
    )
    .unwrap();
    let mut w = GgufWriter::from_file(&nano).unwrap();
    w.set("general.name", Value::String("kill-test".into()))
        .unwrap();
    let cols = 4096u64;
    let rows = 1024u64;
    let data: Vec<u8> = (0..cols * rows * 4).map(|i| (i * 31 % 251) as u8).collect();
    w.add_tensor("padding.weight", &[cols, rows], QuantType::F32, data)
        .unwrap();
    let path = dir.join("big.gguf");
    w.write(&path).unwrap();
    path
}

fn partials(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with(".partial-") {
                out.push(p);
            } else if p.is_dir() {
                dirs.push(p);
            }
        }
    }
    out
}

/// Every manifest parses and names blobs that exist, have the manifest's size and hash to
/// their digest; `hearth list` succeeds.
fn assert_consistent(models: &Path) {
    let store = Store::open(models).unwrap();
    // Store::open just removed the dead writer's temp files.
    assert_eq!(partials(models), Vec::<PathBuf>::new(), "temp files left");
    for entry in store.list().unwrap() {
        let (manifest, _) = store.manifest(&entry.name).unwrap();
        for layer in std::iter::once(&manifest.config).chain(manifest.layers.iter()) {
            let path = store.blob_path(&layer.digest);
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{}: {} missing: {e}", entry.name, path.display()));
            assert_eq!(bytes.len() as u64, layer.size, "{}", path.display());
            assert_eq!(
                hearth::store::Digest::of(&bytes),
                layer.digest,
                "{} is not the blob its name says",
                path.display()
            );
        }
    }
    let o = hearth(models).arg("list").output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn issue_14_a_killed_create_never_leaves_the_store_inconsistent() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let gguf = big_gguf(dir.path());
    let modelfile = dir.path().join("Modelfile");
    std::fs::write(
        &modelfile,
        format!(
            "FROM {}\nTEMPLATE \"\"\"{{{{ messages }}}}\"\"\"\nSYSTEM terse\nPARAMETER temperature 0.5\n",
            gguf.display()
        ),
    )
    .unwrap();
    let create = |name: &str| {
        hearth(&models)
            .args(["create", name, "-f", modelfile.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    // How long one create takes here, to spread the kills over it.
    let t0 = Instant::now();
    assert!(create("first").wait().unwrap().success());
    let full = t0.elapsed();
    assert_consistent(&models);

    let (mut killed, mut attempts) = (0, 0);
    while killed < KILL_POINTS {
        attempts += 1;
        assert!(
            attempts < 8 * KILL_POINTS,
            "only {killed} kills landed in {attempts} tries"
        );
        // Kill points step across the whole run, and again more finely when needed.
        let frac = (attempts * 7 % 64) as f64 / 64.0;
        let mut child = create(&format!("m{}", attempts % 5));
        std::thread::sleep(full.mul_f64(frac));
        let exited = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        let status = child.wait().unwrap();
        if !exited && !status.success() {
            killed += 1;
        }
        assert_consistent(&models);
    }
    // The store still takes a complete create.
    assert!(create("last").wait().unwrap().success());
    assert_consistent(&models);
    let o = hearth(&models).arg("list").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("last:latest"));
    eprintln!("{killed} kills in {attempts} creates (one create: {full:?})");
}

#[test]
fn temp_files_of_a_dead_writer_are_removed_on_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    Store::open(&models).unwrap();
    let stale = [
        models.join("blobs/.partial-abc"),
        models.join(".partial-pull-xyz"),
    ];
    std::fs::write(&stale[0], b"half a blob").unwrap();
    std::fs::create_dir_all(&stale[1]).unwrap();
    let store = Store::open(&models).unwrap();
    assert!(stale.iter().all(|p| !p.exists()));

    // While a writer holds the lock, its temp files are live and stay.
    std::fs::write(&stale[0], b"half a blob").unwrap();
    let lock = std::fs::File::open(models.join(".lock")).unwrap();
    lock.lock_shared().unwrap();
    assert_eq!(store.remove_stale_partials().unwrap(), None);
    assert!(stale[0].exists());
    drop(lock);
    assert_eq!(store.remove_stale_partials().unwrap(), Some(1));
}
