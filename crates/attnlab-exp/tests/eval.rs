//! `attnlab eval`: a finished run scored again gives its last validation loss exactly (the
//! same windows), the loss by position averages to the loss, and bad options are refused
//! naming the option, the value and what is allowed.
//!
//! Planted, and seen to fail: the per-position pass drawing its windows from another seed than
//! the loss's (`EVAL_SEED + 1`) and the position of token i taken as i mod batch →
//! `the_loss_by_position_averages_to_the_loss`. (The loss itself is the trainer's `evaluate`.)

mod common;

use attnlab_exp::eval::eval_run;
use attnlab_exp::train;
use attnlab_exp::trainer::RunOutcome;
use burn::tensor::Device;
use common::{cpu_opts, tiny_run};

fn trained(store: &std::path::Path, sets: &[&str]) -> (std::path::PathBuf, attnlab_exp::Summary) {
    let run = tiny_run("eval", sets);
    let RunOutcome::Finished(s) = train(&run, &cpu_opts(store, None)).unwrap() else { panic!("should finish") };
    (store.join("eval").join(&run.run_id), s)
}

#[test]
fn eval_gives_the_runs_last_validation_loss() {
    let store = tempfile::tempdir().unwrap();
    let (dir, summary) = trained(store.path(), &[]);
    let r = eval_run(&dir, "val", None, None, &Device::flex()).unwrap();
    assert!((r.loss - summary.final_val_loss).abs() < 1e-6, "eval {} vs the run's last val loss {}", r.loss, summary.final_val_loss);
    assert_eq!((r.block, r.windows), (16, 2 * 4));
}

#[test]
fn the_loss_by_position_averages_to_the_loss() {
    let store = tempfile::tempdir().unwrap();
    let (dir, _) = trained(store.path(), &[]);
    let r = eval_run(&dir, "val", Some(32), Some(3), &Device::flex()).unwrap();
    assert_eq!(r.loss_by_position.len(), 32);
    let mean = r.loss_by_position.iter().sum::<f64>() / 32.0;
    assert!((mean - r.loss).abs() < 1e-5 * r.loss, "mean over positions {mean} vs loss {}", r.loss);
}

#[test]
fn bad_options_are_refused() {
    let store = tempfile::tempdir().unwrap();
    let (dir, _) = trained(store.path(), &[]);
    let dev = Device::flex();
    let e = eval_run(&dir, "val", Some(33), None, &dev).unwrap_err().to_string();
    assert!(e.contains("--block = 33") && e.contains("1..=32"), "{e}");
    let e = eval_run(&dir, "test", None, None, &dev).unwrap_err().to_string();
    assert!(e.contains("--split = \"test\"") && e.contains("no test set"), "{e}");
    let e = eval_run(&dir, "val", None, Some(0), &dev).unwrap_err().to_string();
    assert!(e.contains("--batches = 0"), "{e}");
}
