//! Every synthetic task trains end to end from TOML: accuracy in the summary and the metrics,
//! per depth bucket for the needle, and `--set` reaches the task's fields.

mod common;

use attnlab_exp::trainer::RunOutcome;
use attnlab_exp::{train, ExperimentSpec};
use common::cpu_opts;

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
        let acc = s.final_val_accuracy.unwrap_or_else(|| panic!("{sets:?}: no accuracy"));
        assert!((0.0..=1.0).contains(&acc), "{sets:?}: {acc}");
        assert!(s.data_source.starts_with("task:"), "{}", s.data_source);
        assert_eq!(s.final_val_accuracy_by_bucket.as_ref().map_or(0, Vec::len), *buckets, "{sets:?}");
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
