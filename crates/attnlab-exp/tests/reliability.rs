//! Reliability of the run store: determinism, corrupt checkpoints, run locks, a changed
//! dataset, an unwritable output folder.

mod common;

use std::fs;
use std::path::Path;

use attnlab_exp::trainer::RunOutcome;
use attnlab_exp::{train, PreparedRun};
use common::{cpu_opts, tiny_run};


fn run() -> PreparedRun {
    tiny_run("reliability", &[])
}

fn run_dir(out: &Path, run: &PreparedRun) -> std::path::PathBuf {
    out.join("reliability").join(&run.run_id)
}

/// The loss values of `metrics.jsonl` (training and evaluation), as written.
fn losses(out: &Path, run: &PreparedRun) -> Vec<String> {
    fs::read_to_string(run_dir(out, run).join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!("{} {} {}", v["step"], v["loss"], v["val_loss"])
        })
        .collect()
}

fn finish(out: &Path, run: &PreparedRun) -> attnlab_exp::Summary {
    match train(run, &cpu_opts(out, None)).unwrap() {
        RunOutcome::Finished(s) => s,
        other => panic!("expected a finished run, got {other:?}"),
    }
}

#[test]
fn the_same_seed_gives_a_bitwise_identical_loss_curve_on_cpu() {
    let run = run();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    finish(a.path(), &run);
    finish(b.path(), &run);
    let (la, lb) = (losses(a.path(), &run), losses(b.path(), &run));
    assert_eq!(la.len(), 14, "12 training lines and 2 evaluations");
    assert_eq!(la, lb, "same seed, same machine: every logged loss must be equal to the last bit");
}

#[test]
fn a_corrupt_checkpoint_falls_back_to_the_previous_one_then_to_a_fresh_start() {
    let run = run();
    let reference = tempfile::tempdir().unwrap();
    let want = finish(reference.path(), &run);
    for corrupt_both in [false, true] {
        let out = tempfile::tempdir().unwrap();
        assert!(matches!(train(&run, &cpu_opts(out.path(), Some(10))).unwrap(), RunOutcome::Stopped { step: 10 }));
        let dir = run_dir(out.path(), &run);
        // checkpoint/ is step 10 (the stop), checkpoint.prev/ step 8 (periodic).
        let mut bytes = fs::read(dir.join("checkpoint/model.bpk")).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xFF;
        fs::write(dir.join("checkpoint/model.bpk"), &bytes).unwrap();
        if corrupt_both {
            fs::write(dir.join("checkpoint.prev/state.json"), b"{}").unwrap();
        }
        let got = finish(out.path(), &run);
        // Resuming from step 8 or from scratch replays the same batches: same result.
        assert_eq!(got.final_val_loss, want.final_val_loss, "corrupt_both = {corrupt_both}");
        assert_eq!(losses(out.path(), &run), losses(reference.path(), &run));
    }
}

/// Planted, and seen to fail: a lock naming this process's pid judged live (the old rule:
/// a killed container's PID 1 lock blocks the next container's PID 1 for ever).
#[test]
fn a_run_locked_by_a_live_process_is_skipped_and_a_stale_lock_is_taken_over() {
    let run = run();
    let out = tempfile::tempdir().unwrap();
    let dir = run_dir(out.path(), &run);
    fs::create_dir_all(&dir).unwrap();
    let host = attnlab_exp::lock::host();
    let node = attnlab_exp::lock::node();
    // A live process on this host: the run is busy, nothing is written.
    let mut sleeper = std::process::Command::new("sleep").arg("30").spawn().unwrap();
    fs::write(dir.join("lock"), format!("{} {host} 00000000000000aa {node}\n", sleeper.id())).unwrap();
    match train(&run, &cpu_opts(out.path(), None)).unwrap() {
        RunOutcome::Busy(holder) => assert!(holder.contains(&sleeper.id().to_string()), "{holder}"),
        other => panic!("expected busy, got {other:?}"),
    }
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
    assert!(!dir.join("metrics.jsonl").exists() && !dir.join("config.toml").exists());
    // This very process's pid, but none of its locks (a PID namespace): stale.
    fs::write(dir.join("lock"), format!("{} {host} 00000000000000bb {node}\n", std::process::id())).unwrap();
    assert!(attnlab_exp::lock::live_holder(&dir).is_none());
    // The same lock from another PID namespace (another container with this hostname): its
    // pid means nothing here, so only the lease decides: live while its heartbeat is fresh.
    fs::write(dir.join("lock"), format!("{} {host} 00000000000000bb 0000/pid:[1]\n", std::process::id())).unwrap();
    assert!(attnlab_exp::lock::live_holder(&dir).is_some());
    // A pid that cannot exist (above the kernel's pid_max), and an empty lock older than a
    // heartbeat (left by an older binary on a full disk): stale, taken over, removed at the end.
    // An empty lock younger than that may be an older binary's lock being written: busy.
    fs::write(dir.join("lock"), "").unwrap();
    assert!(attnlab_exp::lock::live_holder(&dir).is_some(), "a fresh unreadable lock is busy");
    for planted in [format!("4294967295 {host} 00000000000000cc {node}\n"), String::new()] {
        fs::write(dir.join("lock"), planted).unwrap();
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        fs::File::options().append(true).open(dir.join("lock")).unwrap().set_modified(old).unwrap();
        let _ = fs::remove_file(dir.join("summary.json"));
        finish(out.path(), &run);
        assert!(!dir.join("lock").exists(), "the lock is released when the run ends");
    }
}

/// Eight threads race for one lock, fifty times: exactly one wins each time; a lock taken
/// over by another process is never removed by the loser's drop, and it knows it lost.
///
/// Planted, and seen to fail: a check-then-create lock (`exists()` then write: 6 holders);
/// `Drop` removing the file whatever it holds. Planted and *not* caught: the old in-place
/// write (`create_new`, then the content) — its window is too short for this race even in 400
/// rounds; the hard link rules it out by construction, and an unreadable lock younger than a
/// heartbeat counts as busy.
#[test]
fn one_lock_one_holder_and_drop_removes_only_its_own() {
    use attnlab_exp::lock::RunLock;
    let out = tempfile::tempdir().unwrap();
    let root = out.path().to_path_buf();
    for _ in 0..50 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let (root, barrier) = (root.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    RunLock::acquire(&root).unwrap().ok()
                })
            })
            .collect();
        let locks: Vec<RunLock> = handles.into_iter().filter_map(|h| h.join().unwrap()).collect();
        assert_eq!(locks.len(), 1, "exactly one holder");
        drop(locks);
        assert!(!root.join("lock").exists());
        let leftovers: Vec<_> = fs::read_dir(&root).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    let lock = RunLock::acquire(&root).unwrap().unwrap();
    lock.verify().unwrap();
    fs::write(root.join("lock"), "4242 node-b 1111222233334444\n").unwrap();
    let err = lock.verify().unwrap_err().to_string();
    assert!(err.contains("lost the lock"), "{err}");
    drop(lock);
    assert_eq!(fs::read_to_string(root.join("lock")).unwrap(), "4242 node-b 1111222233334444\n", "another's lock is left alone");
}

/// A held lock's heartbeat keeps its mtime fresh (so it never looks stale to another host),
/// and a lock taken over under it is noticed by the heartbeat. Planted, and seen to fail: the
/// heartbeat thread not started (the mtime stays 200 s old).
#[test]
fn the_heartbeat_refreshes_a_held_lock_and_notices_a_take_over() {
    use attnlab_exp::lock::RunLock;
    attnlab_exp::lock::set_heartbeat(std::time::Duration::from_millis(50));
    let out = tempfile::tempdir().unwrap();
    let lock = RunLock::acquire(out.path()).unwrap().unwrap();
    let path = out.path().join("lock");
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(200);
    fs::File::options().append(true).open(&path).unwrap().set_modified(old).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let age = || fs::metadata(&path).unwrap().modified().unwrap().elapsed().unwrap_or_default();
    while age().as_secs() > 5 {
        assert!(std::time::Instant::now() < deadline, "heartbeat still {:?} old", age());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!lock.lost());
    fs::write(&path, "4242 node-b 1111222233334444\n").unwrap();
    while !lock.lost() {
        assert!(std::time::Instant::now() < deadline, "the heartbeat never saw the lock taken over");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

#[test]
fn resuming_with_a_different_vocabulary_is_refused_and_changes_nothing() {
    let run = run();
    let out = tempfile::tempdir().unwrap();
    assert!(matches!(train(&run, &cpu_opts(out.path(), Some(4))).unwrap(), RunOutcome::Stopped { step: 4 }));
    let dir = run_dir(out.path(), &run);
    let other = attnlab_data::Tokenizer::char_from_text("abc");
    fs::write(dir.join("tokenizer.json"), serde_json::to_string(&other).unwrap()).unwrap();
    let before: Vec<_> = ["metrics.jsonl", "checkpoint/state.json", "tokenizer.json"].iter().map(|f| fs::read(dir.join(f)).unwrap()).collect();
    let err = train(&run, &cpu_opts(out.path(), None)).unwrap_err().to_string();
    assert!(err.contains("tokenizer") && err.contains("3 tokens"), "{err}");
    let after: Vec<_> = ["metrics.jsonl", "checkpoint/state.json", "tokenizer.json"].iter().map(|f| fs::read(dir.join(f)).unwrap()).collect();
    assert_eq!(before, after);
}

#[test]
fn an_output_folder_that_cannot_be_created_is_a_clear_error() {
    let run = run();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("not-a-folder");
    fs::write(&file, "x").unwrap();
    let err = format!("{:#}", train(&run, &cpu_opts(&file, None)).unwrap_err());
    assert!(err.contains("cannot create the run folder"), "{err}");
}
