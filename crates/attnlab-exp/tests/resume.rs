//! A run stopped mid-way and resumed from its checkpoint ends like an uninterrupted one; a
//! finished run is never retrained or overwritten.

mod common;

use attnlab_exp::train;
use attnlab_exp::trainer::{seeded_model, RunOutcome};
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::{Device, Tensor};
use common::{cpu_opts, tiny_run};


#[test]
fn stopped_then_resumed_equals_uninterrupted() {
    // A large weight decay: a resumed optimizer that decayed the norm gains (its groups built
    // from the wrong parameter ids) would leave them different from the uninterrupted run's.
    let run = tiny_run("resume", &["model.attention.kind=gqa", "model.attention.kv_heads=2", "model.mlp=swiglu", "train.weight_decay=0.5"]);
    let whole = tempfile::tempdir().unwrap();
    let RunOutcome::Finished(a) = train(&run, &cpu_opts(whole.path(), None)).unwrap() else { panic!("should finish") };

    let parts = tempfile::tempdir().unwrap();
    match train(&run, &cpu_opts(parts.path(), Some(7))).unwrap() {
        RunOutcome::Stopped { step } => assert_eq!(step, 7),
        other => panic!("expected a stop, got {other:?}"),
    }
    let RunOutcome::Finished(b) = train(&run, &cpu_opts(parts.path(), None)).unwrap() else { panic!("should finish") };
    assert!((a.final_train_loss - b.final_train_loss).abs() < 1e-5, "{} vs {}", a.final_train_loss, b.final_train_loss);
    assert!((a.final_val_loss - b.final_val_loss).abs() < 1e-5, "{} vs {}", a.final_val_loss, b.final_val_loss);
    assert!(a.final_val_loss.is_finite());
    let weights = |store: &std::path::Path| {
        let model = seeded_model(&run.spec.model, 7, &Device::flex())
            .try_load_file(store.join("resume").join(&run.run_id).join("checkpoint").join("model.bpk"))
            .unwrap();
        struct Collect(Vec<(usize, Vec<f32>)>);
        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push((D, param.val().into_data().convert::<f32>().try_into_vec::<f32>().unwrap()));
            }
        }
        let mut c = Collect(vec![]);
        model.visit(&mut c);
        c.0
    };
    let (wa, wb) = (weights(whole.path()), weights(parts.path()));
    assert_eq!(wa.len(), wb.len());
    for ((rank, x), (_, y)) in wa.iter().zip(&wb) {
        let err = x.iter().zip(y).fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(err < 1e-5, "a rank-{rank} parameter differs after resume by {err}");
    }

    // The metrics of the resumed run hold each step once.
    let metrics = std::fs::read_to_string(parts.path().join("resume").join(&run.run_id).join("metrics.jsonl")).unwrap();
    let train_lines = metrics.lines().filter(|l| l.contains("\"train\"")).count();
    assert_eq!(train_lines, 12);

    // Finished: a second call changes nothing.
    let summary_path = whole.path().join("resume").join(&run.run_id).join("summary.json");
    let before = std::fs::read(&summary_path).unwrap();
    assert!(matches!(train(&run, &cpu_opts(whole.path(), None)).unwrap(), RunOutcome::AlreadyFinished(_)));
    assert_eq!(before, std::fs::read(&summary_path).unwrap());
}
