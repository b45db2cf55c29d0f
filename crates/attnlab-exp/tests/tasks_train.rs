//! Every synthetic task trains end to end from TOML: accuracy in the summary and the metrics,
//! per depth bucket for the needle, and `--set` reaches the task's fields.
//!
//! The reported test accuracy is recomputed here from the saved model and the task's test set
//! (argmax at each answer position, counted by hand). Planted: scoring the final model on the
//! validation set (the old behaviour) fails `every_task_trains_and_reports_accuracy`.

mod common;

use attnlab_data::{tasks::to_batch, Dataset};
use attnlab_exp::trainer::{seeded_model, RunOutcome};
use attnlab_exp::{train, ExperimentSpec, PreparedRun};
use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use common::cpu_opts;

/// Test accuracy of the run's saved final model, computed from scratch.
fn recomputed_test_accuracy(run: &PreparedRun, store: &std::path::Path) -> f64 {
    let dev = Device::flex();
    let model = seeded_model(&run.spec.model, 99, &dev)
        .try_load_file(store.join(&run.spec.name).join(&run.run_id).join("checkpoint").join("model.bpk"))
        .unwrap();
    let Dataset::Task(task) = &run.data else { panic!("a task run") };
    let (mut right, mut total) = (0, 0);
    for chunk in task.test.chunks(run.spec.train.batch) {
        let b = to_batch(chunk, false);
        let tokens = Tensor::<2, Int>::from_data(TensorData::new(b.inputs.clone(), [b.batch, b.block]), &dev);
        let predicted: Vec<i64> = model.forward(tokens).argmax(2).into_data().convert::<i64>().try_into_vec().unwrap();
        for (e_i, e) in chunk.iter().enumerate() {
            for &p in &e.answers {
                total += 1;
                right += usize::from(predicted[e_i * b.block + p] == e.tokens[p + 1] as i64);
            }
        }
    }
    right as f64 / total as f64
}

const BASE: &str = r#"
name = "tasks"
[data]
corpus = "builtin"
[data.task]
kind = "mqar"
[model]
d_model = 32
layers = 1
heads = 4
max_seq = 64
[train]
steps = 4
batch = 4
warmup = 1
[eval]
every = 4
batches = 2
"#;

#[test]
fn every_task_trains_and_reports_accuracy() {
    let cases: &[(&[&str], usize)] = &[
        (&["data.task.seq_len=32", "data.task.num_pairs=4", "data.task.num_queries=2"], 0),
        (&["data.task.kind=selective_copy", "data.task.seq_len=24", "data.task.num_tokens=4"], 0),
        (&["data.task.kind=needle", "data.task.seq_len=48", "data.task.depth_buckets=3"], 3),
    ];
    for (sets, buckets) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let run = ExperimentSpec::from_toml_str(BASE, "tasks.toml", &sets).unwrap().prepare("tasks.toml").unwrap();
        let out = tempfile::tempdir().unwrap();
        let RunOutcome::Finished(s) = train(&run, &cpu_opts(out.path(), None)).unwrap() else { panic!("{sets:?}: should finish") };
        let acc = s.final_test_accuracy.unwrap_or_else(|| panic!("{sets:?}: no test accuracy"));
        let want = recomputed_test_accuracy(&run, out.path());
        assert!((acc - want).abs() < 1e-9, "{sets:?}: summary says {acc}, the saved model scores {want} on the test set");
        assert!(s.final_val_accuracy.is_some() && s.test_accuracy_at_best_val.is_some(), "{sets:?}");
        assert!(s.best_val_step.is_some_and(|step| step % 4 == 0 && step <= 4), "{sets:?}: {:?}", s.best_val_step);
        assert!(s.data_source.starts_with("task:"), "{}", s.data_source);
        assert_eq!(s.final_val_accuracy_by_bucket.as_ref().map_or(0, Vec::len), *buckets, "{sets:?}");
        assert_eq!(s.final_test_accuracy_by_bucket.as_ref().map_or(0, Vec::len), *buckets, "{sets:?}");
        let metrics = std::fs::read_to_string(out.path().join("tasks").join(&run.run_id).join("metrics.jsonl")).unwrap();
        assert!(metrics.contains("\"val_accuracy\""), "{sets:?}");
    }
}

#[test]
fn task_errors_name_the_field_before_any_compute() {
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        ExperimentSpec::from_toml_str(BASE, "tasks.toml", &sets).unwrap_err().to_string()
    };
    let e = err(&["data.task.num_pairs=40"]);
    assert!(e.contains("data.task.num_pairs = 40"), "{e}");
    let e = err(&["data.task.kind=sorting"]);
    assert!(e.contains("sorting") && e.contains("mqar, selective_copy, needle"), "{e}");
    let e = err(&["data.task.seq_len=128"]);
    assert!(e.contains("model.max_seq = 64"), "{e}");
}

/// With several evaluations, `best_val_step` is the earliest evaluation with the highest
/// validation accuracy in `metrics.jsonl`, and a run stopped and resumed in between reports
/// the same selection and test scores as an uninterrupted one. Planted: `acc >= best` (the
/// latest of ties) fails the first assertion whenever two evaluations tie.
#[test]
fn the_best_validation_evaluation_is_the_earliest_argmax_and_survives_resume() {
    let sets: Vec<String> = ["train.steps=12", "eval.every=3", "train.checkpoint_every=3", "train.lr=3e-3"].iter().map(|s| s.to_string()).collect();
    let run = ExperimentSpec::from_toml_str(BASE, "tasks.toml", &sets).unwrap().prepare("tasks.toml").unwrap();
    let whole = tempfile::tempdir().unwrap();
    let RunOutcome::Finished(a) = train(&run, &cpu_opts(whole.path(), None)).unwrap() else { panic!("should finish") };
    let metrics = std::fs::read_to_string(whole.path().join("tasks").join(&run.run_id).join("metrics.jsonl")).unwrap();
    let evals: Vec<(usize, f64)> = metrics
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["kind"] == "eval")
        .map(|v| (v["step"].as_u64().unwrap() as usize, v["val_accuracy"].as_f64().unwrap()))
        .collect();
    assert_eq!(evals.len(), 4);
    let best = evals.iter().fold(f64::NEG_INFINITY, |m, (_, acc)| m.max(*acc));
    let earliest = evals.iter().find(|(_, acc)| *acc == best).unwrap().0;
    assert_eq!(a.best_val_step, Some(earliest), "{evals:?}");
    assert_eq!(a.best_val_accuracy, Some(best));
    if earliest == 12 {
        assert_eq!(a.test_accuracy_at_best_val, a.final_test_accuracy);
    }
    let parts = tempfile::tempdir().unwrap();
    assert!(matches!(train(&run, &cpu_opts(parts.path(), Some(7))).unwrap(), RunOutcome::Stopped { step: 7 }));
    let RunOutcome::Finished(b) = train(&run, &cpu_opts(parts.path(), None)).unwrap() else { panic!("should finish") };
    assert_eq!((a.best_val_step, a.test_accuracy_at_best_val, a.final_test_accuracy), (b.best_val_step, b.test_accuracy_at_best_val, b.final_test_accuracy));
}
