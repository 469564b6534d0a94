//! The store against hostile or unlucky surroundings (issue 12, items 1-5,
//! 15, 16, 20, 21): folders it did not make, planted links and FIFOs,
//! concurrent creators, outputs that appear meanwhile, killed processes.
//! Each test names the defect it guards against; each failed on 5fd03cb.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{safetensors, sha256, Rng, Tensor};
use tpde::store::Store;

/// A small safetensors checkpoint that changes with `seed`.
fn checkpoint(seed: u64, n: usize) -> Vec<u8> {
    let mut rng = Rng::new(seed);
    let w = rng.f32_weights(n, 0.05);
    safetensors(&[Tensor::new("w", "F32", &[n as u64], w)], None)
}

fn write(path: &Path, bytes: &[u8]) {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(path, bytes).unwrap();
}

/// A store with steps 1 and 2 (single files).
fn store_with_two_steps(root: &Path) -> (Store, PathBuf) {
    let dir = root.join("store");
    let store = Store::init(&dir, 10).unwrap();
    for step in [1u64, 2] {
        let f = root.join(format!("in/step-{step}.safetensors"));
        write(&f, &checkpoint(step, 4000));
        store.add(&f, step).unwrap();
    }
    (store, dir)
}

/// Runs this test binary again as a child running test `name` with `env`.
fn child(name: &str, env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", name, "--nocapture", "--test-threads", "1"]);
    c.env("TPDE_SAFETY_CHILD", "1");
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

/// The tests of this file run one at a time: a child process forked by one
/// test inherits, until it executes, every open file of the test process,
/// the lock file another test holds included (an flock belongs to the open
/// file, which the child then shares), which makes that store look locked.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_child() -> bool {
    std::env::var_os("TPDE_SAFETY_CHILD").is_some()
}

// Item 1: `tpde store init DIR` in a folder holding `tmp/` or `objects/`
// adopted them, and the first write's garbage collection deleted the user's
// files there.
#[test]
fn init_refuses_a_folder_that_holds_other_files() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("project");
    write(&dir.join("tmp/precious.txt"), b"mine");
    write(&dir.join("objects/data/weights.bin"), b"also mine");
    let err = Store::init(&dir, 10).unwrap_err().to_string();
    assert!(err.contains("is not empty"), "{err}");
    assert!(err.contains("objects") && err.contains("tmp"), "{err}");
    assert_eq!(
        std::fs::read(dir.join("tmp/precious.txt")).unwrap(),
        b"mine"
    );
    assert!(!dir.join("tpde-store.json").exists());

    // A folder with any other file is refused too; an empty one is fine.
    let other = root.path().join("other");
    write(&other.join("notes.txt"), b"x");
    assert!(Store::init(&other, 10).is_err());
    let empty = root.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    Store::init(&empty, 10).unwrap();
}

// Item 1, the rule behind it: a store deletes only what it can prove it
// wrote. Files planted in `tmp/` and `objects/` of a store are left alone by
// every write and listed by verify.
#[test]
fn garbage_collection_deletes_only_the_stores_own_files() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (store, dir) = store_with_two_steps(root.path());
    let planted = [
        "tmp/notes.txt",
        "tmp/object-1-2-3.tmp.bak",
        "objects/ab/readme.txt",
        "objects/zz/weights.bin",
        "objects/mine.bin",
    ];
    for p in planted {
        write(&dir.join(p), b"user data");
    }
    std::fs::create_dir_all(dir.join("tmp/folder/inner")).unwrap();
    write(&dir.join("tmp/folder/inner/x"), b"user data");
    // A leftover of the store's own (an interrupted write) is removed.
    let leftover = dir.join("tmp/object-999-1-0000abcd.tmp");
    write(&leftover, b"partial");
    let f = root.path().join("in/step-3.safetensors");
    write(&f, &checkpoint(3, 4000));
    store.add(&f, 3).unwrap();
    store.remove(1).unwrap();
    store.prune(1, None).unwrap();
    for p in planted {
        assert_eq!(std::fs::read(dir.join(p)).unwrap(), b"user data", "{p}");
    }
    assert!(dir.join("tmp/folder/inner/x").exists());
    assert!(!leftover.exists());
    let report = store.verify().unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(
        report.foreign.len() >= planted.len(),
        "{:?}",
        report.foreign
    );
}

// Item 2: garbage collection followed symlinks: a link planted as
// `STORE/objects/zz` or as `STORE/tmp` made the next add/rm/prune delete the
// link's target recursively, and temporary files were created in it.
#[test]
fn planted_links_are_never_followed() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (store, dir) = store_with_two_steps(root.path());
    let outside = root.path().join("outside");
    write(&outside.join("keep.txt"), b"outside");
    write(
        &outside.join("ab/0123456789abcdef0123456789abcdef.tpde"),
        b"x",
    );
    std::os::unix::fs::symlink(&outside, dir.join("objects/zz")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("objects/ab")).unwrap_or(());
    let f = root.path().join("in/step-3.safetensors");
    write(&f, &checkpoint(3, 4000));
    store.add(&f, 3).unwrap();
    store.remove(1).unwrap();
    assert_eq!(std::fs::read(outside.join("keep.txt")).unwrap(), b"outside");
    assert!(outside
        .join("ab/0123456789abcdef0123456789abcdef.tpde")
        .exists());

    // `tmp/` replaced by a link: writes are refused, nothing lands outside.
    std::fs::rename(dir.join("tmp"), root.path().join("old-tmp")).unwrap();
    std::os::unix::fs::symlink(&outside, dir.join("tmp")).unwrap();
    let count = |d: &Path| std::fs::read_dir(d).unwrap().flatten().count();
    let before = count(&outside);
    let f4 = root.path().join("in/step-4.safetensors");
    write(&f4, &checkpoint(4, 4000));
    let err = store.add(&f4, 4).unwrap_err().to_string();
    assert!(err.contains("symbolic link"), "{err}");
    assert!(store.remove(2).is_err());
    assert_eq!(
        before,
        count(&outside),
        "nothing written into the link's target"
    );
    assert_eq!(std::fs::read(outside.join("keep.txt")).unwrap(), b"outside");
    // The store is still readable, and a link as a content file is refused.
    std::fs::remove_file(dir.join("tmp")).unwrap();
    std::fs::rename(root.path().join("old-tmp"), dir.join("tmp")).unwrap();
    let m = store.manifest().unwrap();
    let obj = &m.get(3).unwrap().files[0].object;
    let obj_path = dir
        .join("objects")
        .join(&obj[..2])
        .join(format!("{obj}.tpde"));
    let real = root.path().join("moved.tpde");
    std::fs::rename(&obj_path, &real).unwrap();
    std::os::unix::fs::symlink(&real, &obj_path).unwrap();
    let report = store.verify().unwrap();
    assert!(
        report.problems.iter().any(|p| p.contains("symbolic link")),
        "{:?}",
        report.problems
    );
}

// Item 4: two `tpde store init` at once: the late one replaced a manifest
// that already held a committed step. Several ranks calling
// `tpde.Store(path)` at once is the realistic trigger: processes creating
// the store and adding a step each, all at once, must all keep their step.
#[test]
fn concurrent_creators_share_one_store() {
    let _serial = serial();
    if is_child() {
        let Ok(dir) = std::env::var("TPDE_SAFETY_STORE") else {
            return;
        };
        let step: u64 = std::env::var("TPDE_SAFETY_STEP").unwrap().parse().unwrap();
        let input = PathBuf::from(std::env::var("TPDE_SAFETY_INPUT").unwrap());
        let store = Store::open_or_create(Path::new(&dir), 10, false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match store.add(&input, step) {
                Ok(_) => break,
                Err(tpde::Error::Locked(_)) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(e) => panic!("step {step}: {e}"),
            }
        }
        return;
    }
    let root = tempfile::tempdir().unwrap();
    for round in 0..3 {
        let dir = root.path().join(format!("store-{round}"));
        let mut kids = Vec::new();
        for step in 1..=6u64 {
            let input = root.path().join(format!("in-{round}/{step}.safetensors"));
            write(&input, &checkpoint(step, 300));
            kids.push(
                child(
                    "concurrent_creators_share_one_store",
                    &[
                        ("TPDE_SAFETY_STORE", dir.to_str().unwrap()),
                        ("TPDE_SAFETY_STEP", &step.to_string()),
                        ("TPDE_SAFETY_INPUT", input.to_str().unwrap()),
                    ],
                )
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap(),
            );
        }
        for mut k in kids {
            assert!(k.wait().unwrap().success(), "a creator failed");
        }
        let store = Store::open(&dir).unwrap();
        assert_eq!(store.steps().unwrap(), vec![1, 2, 3, 4, 5, 6]);
        assert!(store.verify().unwrap().problems.is_empty());
    }
    // And a second init of a store with a step refuses, keeping the step.
    let (store, dir) = store_with_two_steps(root.path());
    let err = Store::init(&dir, 10).unwrap_err().to_string();
    assert!(err.contains("already holds a store"), "{err}");
    assert_eq!(store.steps().unwrap(), vec![1, 2]);
}

// Item 5: `store get` checked that OUT did not exist at the start, then
// renamed over it at the end: a file created meanwhile was replaced.
#[test]
fn get_never_replaces_an_output_that_appears_meanwhile() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (store, _) = store_with_two_steps(root.path());
    for step in [1u64, 2] {
        let out = root.path().join(format!("out-{step}.safetensors"));
        let sneaky = out.clone();
        // Someone creates OUT while the step is being decoded.
        let store = Store::open(store.root())
            .unwrap()
            .after_decode(move || std::fs::write(&sneaky, b"created meanwhile").unwrap());
        let err = store.get(step, &out).unwrap_err().to_string();
        assert!(err.contains("appeared") || err.contains("exists"), "{err}");
        assert_eq!(std::fs::read(&out).unwrap(), b"created meanwhile");
    }
    // The same for a folder checkpoint.
    let ckdir = root.path().join("ck/checkpoint-7");
    write(&ckdir.join("model.safetensors"), &checkpoint(7, 500));
    write(&ckdir.join("sub/state.json"), b"{}");
    store.add(&ckdir, 7).unwrap();
    let out = root.path().join("restored-7");
    let sneaky = out.clone();
    let racing = Store::open(store.root()).unwrap().after_decode(move || {
        std::fs::create_dir_all(&sneaky).unwrap();
        std::fs::write(sneaky.join("mine.txt"), b"mine").unwrap();
    });
    assert!(racing.get(7, &out).is_err());
    assert_eq!(std::fs::read(out.join("mine.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
    // Nothing of tpde's is left beside it.
    let left: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".tpde"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

// Item 15: a killed `get` left a `.tpde-tmp-*` folder beside OUT. A killed
// get of a single file now leaves nothing; of a folder, a temporary folder
// that the next get into the same place removes.
#[test]
fn a_killed_get_leaves_nothing_behind() {
    let _serial = serial();
    if is_child() {
        let Ok(dir) = std::env::var("TPDE_SAFETY_STORE") else {
            return;
        };
        let out = PathBuf::from(std::env::var("TPDE_SAFETY_OUT").unwrap());
        let step = std::env::var("TPDE_SAFETY_STEP").unwrap().parse().unwrap();
        let flag = PathBuf::from(std::env::var("TPDE_SAFETY_FLAG").unwrap());
        let store = Store::open(Path::new(&dir)).unwrap().after_decode(move || {
            std::fs::write(&flag, b"decoded").unwrap();
            std::thread::sleep(Duration::from_secs(60))
        });
        let _ = store.get(step, &out);
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (store, dir) = store_with_two_steps(root.path());
    let ckdir = root.path().join("ck/checkpoint-5");
    write(&ckdir.join("model.safetensors"), &checkpoint(5, 500));
    store.add(&ckdir, 5).unwrap();
    for (step, name) in [(2u64, "file-out"), (5, "dir-out")] {
        let outs = root.path().join(format!("outs-{step}"));
        std::fs::create_dir(&outs).unwrap();
        let out = outs.join(name);
        let flag = root.path().join(format!("flag-{step}"));
        let mut kid = child(
            "a_killed_get_leaves_nothing_behind",
            &[
                ("TPDE_SAFETY_STORE", dir.to_str().unwrap()),
                ("TPDE_SAFETY_OUT", out.to_str().unwrap()),
                ("TPDE_SAFETY_STEP", &step.to_string()),
                ("TPDE_SAFETY_FLAG", flag.to_str().unwrap()),
            ],
        )
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
        // Kill it once it has decoded the step, before the output is named.
        let deadline = Instant::now() + Duration::from_secs(60);
        while !flag.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(flag.exists(), "the child never got to decode");
        kid.kill().unwrap();
        kid.wait().unwrap();
        let left = |d: &Path| std::fs::read_dir(d).unwrap().flatten().count();
        if step == 2 {
            assert_eq!(left(&outs), 0, "a killed get of a file leaves nothing");
        }
        // The next get into the same folder cleans up and succeeds.
        store.get(step, &out).unwrap();
        assert_eq!(left(&outs), 1, "only the output");
    }
}

/// Runs `f` on another thread; `None` if it does not finish within `secs`.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs)).ok()
}

fn mkfifo(p: &Path) {
    let st = Command::new("mkfifo").arg(p).status().unwrap();
    assert!(st.success());
}

// Item 16: a FIFO planted as a content file or as `lock` hung `get`,
// `verify` and `ls` forever.
#[test]
fn fifos_in_the_store_are_refused_not_waited_on() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (store, dir) = store_with_two_steps(root.path());
    let m = store.manifest().unwrap();
    let obj = m.get(2).unwrap().files[0].object.clone();
    let obj_path = dir
        .join("objects")
        .join(&obj[..2])
        .join(format!("{obj}.tpde"));
    std::fs::remove_file(&obj_path).unwrap();
    mkfifo(&obj_path);
    let d = dir.clone();
    let report = within(20, move || Store::open(&d).unwrap().verify().unwrap())
        .expect("verify must not hang on a FIFO");
    assert!(
        report.problems.iter().any(|p| p.contains("special file")),
        "{:?}",
        report.problems
    );
    let (d, out) = (dir.clone(), root.path().join("out"));
    let got = within(20, move || {
        Store::open(&d).unwrap().get(2, &out).map(|_| ())
    })
    .expect("get must not hang on a FIFO");
    assert!(got.is_err());

    std::fs::remove_file(dir.join("lock")).unwrap();
    mkfifo(&dir.join("lock"));
    let d = dir.clone();
    let ls = within(20, move || {
        Store::open(&d).unwrap().steps().map_err(|e| e.to_string())
    })
    .expect("ls must not hang on a FIFO lock");
    assert!(ls.unwrap_err().contains("special file"));
    let d = dir.clone();
    let f = root.path().join("in/step-1.safetensors");
    let add = within(20, move || Store::open(&d).unwrap().add(&f, 9).map(|_| ()))
        .expect("add must not hang on a FIFO lock");
    assert!(add.is_err());
}

// Item 21: verify passed a manifest in which a path is both a file and a
// folder, which get then could not write.
#[test]
fn a_path_both_file_and_folder_is_a_damaged_manifest() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let store = Store::init(&dir, 10).unwrap();
    let ck = tpde::store::Checkpoint::from_files(
        "ck",
        vec![("a".into(), b"1".to_vec()), ("b/c".into(), b"2".to_vec())],
    )
    .unwrap();
    store.add_checkpoint(&ck, 1, None, &mut |_| {}).unwrap();
    let path = dir.join("tpde-store.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let bad = text.replace("\"path\": \"b/c\"", "\"path\": \"a/c\"");
    assert_ne!(text, bad);
    std::fs::write(&path, bad).unwrap();
    let err = Store::open(&dir).unwrap().verify().unwrap_err().to_string();
    assert!(err.contains("both as a file and as a folder"), "{err}");
    // Nor can such a checkpoint be added.
    let err = tpde::store::Checkpoint::from_files(
        "ck",
        vec![("a".into(), b"1".to_vec()), ("a/c".into(), b"2".to_vec())],
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("both as a file and as a folder"), "{err}");
}

// `tpde.Store("/nonexistent/dir/store")` silently created all missing
// parents: only the last component is created unless asked.
#[test]
fn missing_parents_are_made_only_when_asked() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let deep = root.path().join("a/b/store");
    let err = Store::init(&deep, 10).unwrap_err().to_string();
    assert!(
        err.contains("does not exist") && err.contains("--parents"),
        "{err}"
    );
    assert!(!root.path().join("a").exists());
    Store::create(&deep, 10, true).unwrap();
    assert!(Store::open(&deep).is_ok());
    let again = Store::open_or_create(&deep, 10, false).unwrap();
    assert_eq!(again.steps().unwrap(), Vec::<u64>::new());
}

// Restores are byte for byte after all of the above (a guard that the
// stricter opens did not change what comes back).
#[test]
fn restores_stay_byte_identical() {
    let _serial = serial();
    let root = tempfile::tempdir().unwrap();
    let (store, _) = store_with_two_steps(root.path());
    for step in [1u64, 2] {
        let out = root.path().join(format!("r-{step}"));
        store.get(step, &out).unwrap();
        assert_eq!(
            sha256(&std::fs::read(&out).unwrap()),
            sha256(&checkpoint(step, 4000))
        );
    }
}
