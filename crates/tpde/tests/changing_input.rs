//! Input files that change while tpde reads them: a file truncated under
//! its memory map must end in an error, not in SIGBUS, and a file rewritten
//! in place must never give a container that disagrees with itself.
//!
//! A test hook runs after each batch window of the input is coded, so that
//! the change lands at a known point of the encode. The hooks are global:
//! the tests take turns.

mod common;

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use common::{Rng, Tensor};
use tpde::EncodeOptions;

/// Chunks of 64 KiB, four to a batch window.
const CHUNK: usize = 64 << 10;
const BATCH: usize = 4 * CHUNK;

static TURN: Mutex<()> = Mutex::new(());

/// Holds the hooks for one test and resets them when dropped.
struct Hooks(#[allow(dead_code)] MutexGuard<'static, ()>);

impl Hooks {
    fn set(after_window: impl Fn(usize) + Send + Sync + 'static) -> Hooks {
        let turn = TURN.lock().unwrap_or_else(|p| p.into_inner());
        tpde::test_hooks::set_batch_bytes(BATCH);
        tpde::test_hooks::set_after_window(Some(Arc::new(after_window)));
        Hooks(turn)
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        tpde::test_hooks::set_after_window(None);
        tpde::test_hooks::set_batch_bytes(0);
    }
}

fn opts() -> EncodeOptions {
    EncodeOptions {
        chunk_size: CHUNK,
        ..EncodeOptions::default()
    }
}

/// A safetensors checkpoint of four F32 tensors, one batch window each, and
/// its reference (a third of the elements moved). Returns (cur, ref, header
/// length of cur).
fn pair() -> (Vec<u8>, Vec<u8>, usize) {
    let mut rng = Rng::new(11);
    let n = BATCH / 4;
    let names = ["a", "b", "c", "d"];
    let reference: Vec<Tensor> = names
        .iter()
        .map(|name| Tensor::new(name, "F32", &[n as u64], rng.f32_weights(n, 0.02)))
        .collect();
    let mut cur = reference.clone();
    for t in &mut cur {
        common::perturb_fraction(&mut rng, &mut t.data, 4, 0.3);
    }
    let cur = common::safetensors(&cur, None);
    let hl = tpde::source::safetensors::parse(&cur).unwrap().header_len as usize;
    (cur, common::safetensors(&reference, None), hl)
}

/// Writes `bytes` to `dir/name`, last modified an hour ago: a rewrite during
/// the test then shows in the modification time, however coarse the clock.
fn write_old(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    path
}

/// Overwrites `path` from byte `from` with its bytes inverted, in place.
fn rewrite_in_place(path: &Path, from: usize) {
    let bytes = std::fs::read(path).unwrap();
    let flipped: Vec<u8> = bytes[from..].iter().map(|b| !b).collect();
    let f = std::fs::File::options().write(true).open(path).unwrap();
    f.write_all_at(&flipped, from as u64).unwrap();
}

fn assert_changed(err: &tpde::Error, path: &Path) {
    let msg = err.to_string();
    assert!(
        msg.contains("changed while being read") && msg.contains(&path.display().to_string()),
        "not an input-changed error naming {}: {msg}",
        path.display()
    );
}

/// The child half of `truncated_while_encoding_is_an_error_not_a_signal`:
/// encodes (as `tpde encode` does) a file that is cut short after the first
/// window, and exits 2 with the error, as the CLI does.
fn truncating_child(dir: &Path) -> ! {
    let (cur, reference, hl) = pair();
    let cur_path = write_old(dir, "cur.safetensors", &cur);
    let ref_path = write_old(dir, "ref.safetensors", &reference);
    let victim = cur_path.clone();
    let _hooks = Hooks::set(move |window| {
        if window == 0 {
            let f = std::fs::File::options().write(true).open(&victim).unwrap();
            f.set_len((hl + CHUNK) as u64).unwrap();
        }
    });
    let out = dir.join("out.tpde");
    match tpde::container::files::encode_file(&cur_path, Some(&ref_path), &out, &opts(), None) {
        Ok(_) => {
            eprintln!("encoded without an error");
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(if out.exists() { 3 } else { 2 })
        }
    }
}

#[test]
fn truncated_while_encoding_is_an_error_not_a_signal() {
    const CHILD: &str = "TPDE_TEST_TRUNCATING_CHILD";
    if let Some(dir) = std::env::var_os(CHILD) {
        truncating_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let run = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "truncated_while_encoding_is_an_error_not_a_signal",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD, dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        run.status.signal(),
        None,
        "the encode was killed by a signal; stderr: {stderr}"
    );
    assert_eq!(
        run.status.code(),
        Some(2),
        "exit status (3: an output was left behind); stderr: {stderr}"
    );
    assert!(
        stderr.contains("changed while being read") && stderr.contains("cur.safetensors"),
        "{stderr}"
    );
}

#[test]
fn truncated_before_encoding_is_an_error() {
    // Takes its turn: another test's hooks must not run in this encode.
    let _hooks = Hooks::set(|_| {});
    let (cur, _, _) = pair();
    let dir = tempfile::tempdir().unwrap();
    let path = write_old(dir.path(), "cur.safetensors", &cur);
    let bytes = tpde::FileBytes::open(&path).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    let mut out = Vec::new();
    let err = tpde::encode(&bytes, None, &opts(), &mut out, None).unwrap_err();
    assert_changed(&err, &path);
}

/// Checks a container made while the input changed: it decodes, to exactly
/// the bytes that were read (the first window before the rewrite, the rest
/// after), and the encode reported the change.
fn check_consistent(
    result: tpde::Result<tpde::EncodeStats>,
    packed: &[u8],
    reference: Option<&[u8]>,
    read: &[u8],
    changed: &Path,
) {
    let mut restored = Vec::new();
    let decoded = tpde::decode(packed, reference, &mut restored, None)
        .expect("the container decodes: it agrees with itself");
    assert!(restored == read, "decoded bytes differ from the bytes read");
    match result {
        Ok(stats) => panic!(
            "the change went unnoticed (output digest {:x}, decoded {:x})",
            stats.output_digest, decoded.output_digest
        ),
        Err(e) => assert_changed(&e, changed),
    }
}

#[test]
fn rewritten_in_place_gives_a_consistent_container_and_an_error() {
    let (cur, reference, hl) = pair();
    let dir = tempfile::tempdir().unwrap();
    let path = write_old(dir.path(), "cur.safetensors", &cur);
    let bytes = tpde::FileBytes::open(&path).unwrap();
    let victim = path.clone();
    let hooks = Hooks::set(move |window| {
        if window == 0 {
            rewrite_in_place(&victim, hl);
        }
    });
    let mut packed = Vec::new();
    let result = tpde::encode(&bytes, Some(&reference), &opts(), &mut packed, None);
    drop(hooks);
    // The first window (its data: one batch) as it was, the rest rewritten.
    let mut read = cur.clone();
    for b in &mut read[hl + BATCH..] {
        *b = !*b;
    }
    check_consistent(result, &packed, Some(&reference), &read, &path);
}

#[test]
fn opaque_rewritten_in_place_gives_a_consistent_container_and_an_error() {
    let (cur, reference, _) = pair();
    let dir = tempfile::tempdir().unwrap();
    let path = write_old(dir.path(), "cur.bin", &cur);
    let bytes = tpde::FileBytes::open(&path).unwrap();
    let victim = path.clone();
    let hooks = Hooks::set(move |window| {
        if window == 1 {
            rewrite_in_place(&victim, 0);
        }
    });
    let mut packed = Vec::new();
    let opts = EncodeOptions {
        input: tpde::InputKind::Opaque,
        ..opts()
    };
    let result = tpde::encode(&bytes, Some(&reference), &opts, &mut packed, None);
    drop(hooks);
    let mut read = cur.clone();
    for b in &mut read[2 * BATCH..] {
        *b = !*b;
    }
    check_consistent(result, &packed, Some(&reference), &read, &path);
}

#[test]
fn reference_rewritten_in_place_is_an_error_never_a_wrong_file() {
    let (cur, reference, hl) = pair();
    let dir = tempfile::tempdir().unwrap();
    let ref_path = write_old(dir.path(), "ref.safetensors", &reference);
    let ref_bytes = tpde::FileBytes::open(&ref_path).unwrap();
    let victim = ref_path.clone();
    let hooks = Hooks::set(move |window| {
        if window == 0 {
            rewrite_in_place(&victim, hl);
        }
    });
    let mut packed = Vec::new();
    let result = tpde::encode(&cur, Some(&ref_bytes), &opts(), &mut packed, None);
    drop(hooks);
    assert_changed(&result.unwrap_err(), &ref_path);
    // Whatever was written never decodes to something else than the input.
    let now = std::fs::read(&ref_path).unwrap();
    for r in [&reference, &now] {
        let mut restored = Vec::new();
        if tpde::decode(&packed, Some(r), &mut restored, None).is_ok() {
            assert!(restored == cur, "decoded silently to other bytes");
        }
    }
}

#[test]
fn archive_filler_rewritten_after_coding_is_hashed_as_stored() {
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/v2");
    let cur = std::fs::read(data.join("cur.pt")).unwrap();
    let reference = std::fs::read(data.join("ref.pt")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = write_old(dir.path(), "cur.pt", &cur);
    let bytes = tpde::FileBytes::open(&path).unwrap();
    let victim = path.clone();
    // The zip's central directory, at the end: archive filler, outside the
    // tensor storages.
    let tail = cur.len() - 64;
    let hooks = Hooks::set(move |window| {
        if window == 0 {
            rewrite_in_place(&victim, tail);
        }
    });
    let mut packed = Vec::new();
    let opts = EncodeOptions {
        input: tpde::InputKind::Archive,
        ..opts()
    };
    let result = tpde::encode(&bytes, Some(&reference), &opts, &mut packed, None);
    drop(hooks);
    // The filler was read (and stored) before the rewrite.
    check_consistent(result, &packed, Some(&reference), &cur, &path);
}

// Issue 12, item 3: a checkpoint rewritten in place while `store add` read
// it was committed (add exited 0) as a step that could never be restored.
// Now the add fails, naming the file, and the store is as it was.
#[test]
fn store_add_of_a_file_rewritten_meanwhile_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (cur, reference, hl) = pair();
    let victim = dir.path().join("step-2.safetensors");
    let armed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (v, a) = (victim.clone(), armed.clone());
    // Held for the whole test: every encode here runs under these hooks.
    let hooks = Hooks::set(move |window| {
        if window == 0 && a.swap(false, std::sync::atomic::Ordering::SeqCst) {
            rewrite_in_place(&v, hl + CHUNK);
        }
    });
    let store = tpde::store::Store::init(&dir.path().join("store"), 10).unwrap();
    let first = write_old(dir.path(), "step-1.safetensors", &reference);
    store.add(&first, 1).unwrap();
    write_old(dir.path(), "step-2.safetensors", &cur);
    armed.store(true, std::sync::atomic::Ordering::SeqCst);
    let err = store.add(&victim, 2).unwrap_err();
    assert!(matches!(err, tpde::Error::InputChanged { .. }), "{err:?}");
    assert_changed(&err, &victim);
    assert_eq!(store.steps().unwrap(), vec![1]);
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    // Once complete, it is added and restores as it now is.
    store.add(&victim, 2).unwrap();
    let got = store.restore(2).unwrap();
    assert_eq!(got.files[0].1, std::fs::read(&victim).unwrap());
    drop(hooks);
}
