//! `attnlab eval`: a finished run scored again gives its last validation loss exactly (the
//! same windows), the loss by position averages to the loss, and bad options are refused
//! naming the option, the value and what is allowed.
//!
//! Planted, and seen to fail: the per-position pass drawing its windows from another seed than
//! the loss's (`EVAL_SEED + 1`) and the position of token i taken as i mod batch →
//! `the_loss_by_position_averages_to_the_loss`. (The loss itself is the trainer's `evaluate`.)
//!
//! Inference-time settings (`--set eval.…`): Star Attention with one block equals global
//! attention on the same query positions, smaller blocks do not; Q-exit at q → 0 equals the
//! one-loop model and at q = 1 the full loop count; each evaluation is appended to the run's
//! `evals.jsonl`. Planted, and seen to fail: Q-exit's CDF starting at loop 2 (`skip(1)`) →
//! `q_exit_spans_one_loop_to_all_loops`; the star scores taken over the whole window →
//! `star_with_one_block_is_global_attention_on_the_query`.

mod common;

use attnlab_exp::eval::{eval_run, stored_evals};
use attnlab_exp::inference::EvalSettings;
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
    let r = eval_run(&dir, "val", None, None, &EvalSettings::default(), &Device::flex()).unwrap();
    assert!((r.loss - summary.final_val_loss).abs() < 1e-6, "eval {} vs the run's last val loss {}", r.loss, summary.final_val_loss);
    assert_eq!((r.block, r.windows), (16, 2 * 4));
}

#[test]
fn the_loss_by_position_averages_to_the_loss() {
    let store = tempfile::tempdir().unwrap();
    let (dir, _) = trained(store.path(), &[]);
    let r = eval_run(&dir, "val", Some(32), Some(3), &EvalSettings::default(), &Device::flex()).unwrap();
    assert_eq!(r.loss_by_position.len(), 32);
    let mean = r.loss_by_position.iter().sum::<f64>() / 32.0;
    assert!((mean - r.loss).abs() < 1e-5 * r.loss, "mean over positions {mean} vs loss {}", r.loss);
}

#[test]
fn bad_options_are_refused() {
    let store = tempfile::tempdir().unwrap();
    let (dir, _) = trained(store.path(), &[]);
    let dev = Device::flex();
    let e = eval_run(&dir, "val", Some(33), None, &EvalSettings::default(), &dev).unwrap_err().to_string();
    assert!(e.contains("--block = 33") && e.contains("1..=32"), "{e}");
    let e = eval_run(&dir, "test", None, None, &EvalSettings::default(), &dev).unwrap_err().to_string();
    assert!(e.contains("--split = \"test\"") && e.contains("no test set"), "{e}");
    let e = eval_run(&dir, "val", None, Some(0), &EvalSettings::default(), &dev).unwrap_err().to_string();
    assert!(e.contains("--batches = 0"), "{e}");
}

fn settings(sets: &[&str]) -> EvalSettings {
    EvalSettings::from_sets(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
}

#[test]
fn star_with_one_block_is_global_attention_on_the_query() {
    let store = tempfile::tempdir().unwrap();
    let (dir, _) = trained(store.path(), &[]);
    let dev = Device::flex();
    // Window 16: context 12, query 4 (the last quarter).
    let one = eval_run(&dir, "val", None, None, &settings(&["eval.inference.kind=star", "eval.inference.block=12", "eval.inference.query=4"]), &dev).unwrap();
    let s = one.star.as_ref().expect("a star score");
    assert_eq!((s.query, s.context, s.blocks), (4, 12, 1));
    assert!((s.loss - s.global_loss).abs() < 1e-5 * s.global_loss, "one block: star {} vs global {}", s.loss, s.global_loss);
    // The global loss on the query positions is the dense evaluation's loss there.
    let dense = eval_run(&dir, "val", None, None, &EvalSettings::default(), &dev).unwrap();
    let tail = dense.loss_by_position[12..].iter().sum::<f64>() / 4.0;
    assert!((s.global_loss - tail).abs() < 1e-5 * tail, "global on the query {} vs dense by position {tail}", s.global_loss);
    let small = eval_run(&dir, "val", None, None, &settings(&["eval.inference.kind=star", "eval.inference.block=3", "eval.inference.anchor=0", "eval.inference.query=4", "eval.inference.hosts=3"]), &dev).unwrap();
    let s3 = small.star.unwrap();
    assert_eq!(s3.blocks, 4);
    assert!((s3.global_loss - s.global_loss).abs() < 1e-6 && (s3.loss - s3.global_loss).abs() > 1e-4, "blocks of 3 without anchor change the loss: {} vs {}", s3.loss, s3.global_loss);
    assert_eq!(small.settings, "star block=3 anchor=0 hosts=3 query=4");
    let stored = stored_evals(&dir);
    assert_eq!(stored.len(), 3, "every evaluation is appended to evals.jsonl");
    assert_eq!(stored[2].settings, small.settings);
    assert_eq!(stored[1].settings, "dense");
}

#[test]
fn q_exit_spans_one_loop_to_all_loops() {
    let store = tempfile::tempdir().unwrap();
    let (dir, _) = trained(store.path(), &["model.loops=3", "model.exit=learned"]);
    let dev = Device::flex();
    let all = eval_run(&dir, "val", None, None, &EvalSettings::default(), &dev).unwrap();
    let one = eval_run(&dir, "val", None, None, &settings(&["eval.loops=1"]), &dev).unwrap();
    let first = eval_run(&dir, "val", None, None, &settings(&["eval.exit_q=1e-12"]), &dev).unwrap();
    let last = eval_run(&dir, "val", None, None, &settings(&["eval.exit_q=1"]), &dev).unwrap();
    assert!((first.loss - one.loss).abs() < 1e-5 * one.loss, "q → 0: {} vs one loop {}", first.loss, one.loss);
    assert_eq!(first.mean_exit_loop, Some(1.0));
    assert!((last.loss - all.loss).abs() < 1e-5 * all.loss, "q = 1: {} vs all loops {}", last.loss, all.loss);
    assert_eq!(last.mean_exit_loop, Some(3.0));
    assert!((one.loss - all.loss).abs() > 1e-4, "one loop and three differ");
    let mid = eval_run(&dir, "val", None, None, &settings(&["eval.exit_q=0.5"]), &dev).unwrap();
    let m = mid.mean_exit_loop.unwrap();
    assert!((1.0..=3.0).contains(&m), "{m}");
}

#[test]
fn bad_inference_settings_are_refused() {
    let parse = |sets: &[&str]| EvalSettings::from_sets(&sets.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap_err().to_string();
    let e = parse(&["model.loops=2"]);
    assert!(e.contains("--set model.loops") && e.contains("eval.inference.kind"), "{e}");
    let e = parse(&["eval.inference.kind=star"]);
    assert!(e.contains("block"), "{e}");
    let e = parse(&["eval.inference.kind=star", "eval.inference.block=4", "eval.inference.anchor=9"]);
    assert!(e.contains("anchor = 9") && e.contains("≤ block = 4"), "{e}");
    let e = parse(&["eval.inference.kind=star", "eval.inference.blok=8"]);
    assert!(e.contains("eval.inference.blok") && e.contains("block, anchor, hosts, query"), "{e}");
    let e = parse(&["eval.inference.kind=star", "eval.inference.block=abc"]);
    assert!(e.contains("eval.inference.block = \"abc\"") && e.contains("whole number"), "{e}");
    let e = parse(&["eval.inference.kind=star", "eval.inference.budget=8"]);
    assert!(e.contains("eval.inference.budget: unknown for kind = \"star\""), "{e}");
    let e = parse(&["eval.inference.kind=adamax"]);
    assert!(e.contains("adamax") && e.contains("star"), "{e}");
    let e = parse(&["eval.exit_q=1.5"]);
    assert!(e.contains("eval.exit_q = 1.5"), "{e}");
    let e = parse(&["eval.inference.kind=adamas", "eval.inference.budget=8", "eval.inference.tau=-1"]);
    assert!(e.contains("eval.inference.tau = -1"), "{e}");
    let e = parse(&["eval.inference.kind=star", "eval.inference.block=4", "eval.exit_q=0.5"]);
    assert!(e.contains("eval.exit_q") && e.contains("dense"), "{e}");
    let e = parse(&["eval.loops=0"]);
    assert!(e.contains("eval.loops = 0"), "{e}");
    let store = tempfile::tempdir().unwrap();
    let (dir, _) = trained(store.path(), &[]);
    let dev = Device::flex();
    let e = eval_run(&dir, "val", None, None, &settings(&["eval.loops=2"]), &dev).unwrap_err().to_string();
    assert!(e.contains("not a looped model"), "{e}");
    let e = eval_run(&dir, "val", None, None, &settings(&["eval.exit_q=0.5"]), &dev).unwrap_err().to_string();
    assert!(e.contains("no learned exit"), "{e}");
    let e = eval_run(&dir, "val", None, None, &settings(&["eval.inference.kind=star", "eval.inference.block=4", "eval.inference.query=16"]), &dev).unwrap_err().to_string();
    assert!(e.contains("eval.inference.query = 16"), "{e}");
    assert!(stored_evals(&dir).is_empty(), "a refused evaluation stores nothing");
}

/// Adamas through `attnlab eval`: a budget over the window is the dense model on the decoded
/// positions (recall undefined: no row over budget), the oracle at a small budget has recall 1,
/// and the stored record carries the setting. (The mechanism itself is tested against the rule
/// by hand in `attnlab-model`'s `sparse_decode` tests.)
#[test]
fn key_selection_at_decode_is_scored_against_the_dense_model() {
    let store = tempfile::tempdir().unwrap();
    let (dir, _) = trained(store.path(), &["model.layers=3"]);
    let dev = Device::flex();
    let full = eval_run(&dir, "val", None, None, &settings(&["eval.inference.kind=adamas", "eval.inference.budget=16", "eval.inference.dense_layers=1"]), &dev).unwrap();
    let s = full.sparse.as_ref().unwrap();
    assert_eq!((s.prefill, s.decoded), (8, 8));
    assert!((s.loss - s.dense_loss).abs() < 1e-5 * s.dense_loss, "budget ≥ window: {} vs dense {}", s.loss, s.dense_loss);
    assert!(s.recall.is_nan());
    let dense = eval_run(&dir, "val", None, None, &EvalSettings::default(), &dev).unwrap();
    let tail = dense.loss_by_position[8..].iter().sum::<f64>() / 8.0;
    assert!((s.dense_loss - tail).abs() < 1e-5 * tail, "dense decode {} vs the forward's loss there {tail}", s.dense_loss);
    let adamas = eval_run(&dir, "val", None, None, &settings(&["eval.inference.kind=adamas", "eval.inference.budget=4", "eval.inference.dense_layers=1", "eval.inference.prefill=4"]), &dev).unwrap();
    let a = adamas.sparse.as_ref().unwrap();
    assert!(a.recall > 0.0 && a.recall < 1.0 && a.taus.len() == 3, "{a:?}");
    assert_eq!(adamas.settings, "adamas budget=4 dense_layers=1 prefill=4");
    // Every record reads back, NaN recall (written as null) included.
    let stored = stored_evals(&dir);
    assert_eq!(stored.len(), 3);
    assert!(stored[0].sparse.as_ref().unwrap().recall.is_nan());
    assert_eq!(stored.last().unwrap().sparse.as_ref().unwrap().recall, a.recall);
    let pages = eval_run(&dir, "val", None, None, &settings(&["eval.inference.kind=pages", "eval.inference.budget=4", "eval.inference.page=4"]), &dev).unwrap_err().to_string();
    assert!(pages.contains("eval.inference.page = 4") && pages.contains("1 to 3"), "{pages}");
    let e = eval_run(&dir, "val", None, None, &settings(&["eval.inference.kind=adamas", "eval.inference.budget=4", "eval.inference.dense_layers=3"]), &dev).unwrap_err().to_string();
    assert!(e.contains("dense_layers = 3") && e.contains("0 to 2"), "{e}");
}
