//! MHA learns a tiny multi-query associative recall to ≥ 90% test accuracy on CPU.
//!
//! MQAR needs an induction circuit (a previous-token head, then a head matching the query key
//! against it); a 2-layer model first plateaus near 2/3 (answering the last query by
//! elimination) and then jumps to ~100% when the circuit forms, around step 600 for this seed.

use attnlab_exp::trainer::RunOutcome;
mod common;

use attnlab_exp::{train, ExperimentSpec};
use common::cpu_opts;

const SPEC: &str = r#"
name = "mqar_learns"
[data.task]
kind = "mqar"
vocab = 12
seq_len = 16
num_pairs = 3
num_queries = 3
[model]
d_model = 64
layers = 2
heads = 4
max_seq = 16
[model.attention]
kind = "mha"
[train]
steps = 1000
batch = 64
lr = 1e-3
min_lr = 3e-4
warmup = 20
weight_decay = 0.0
grad_clip = 0.0
seed = 1
log_every = 100
[eval]
every = 1000
batches = 4
"#;

#[test]
fn mha_reaches_90_percent_on_a_tiny_mqar() {
    let run = ExperimentSpec::from_toml_str(SPEC, "mqar.toml", &[]).unwrap().prepare("mqar.toml").unwrap();
    let out = tempfile::tempdir().unwrap();
    let RunOutcome::Finished(s) = train(&run, &cpu_opts(out.path(), None)).unwrap() else { panic!("should finish") };
    let acc = s.final_test_accuracy.expect("a task run reports test accuracy");
    assert!(acc >= 0.9, "test accuracy {acc:.3} < 0.9 (val loss {:.3})", s.final_val_loss);
}
